/* Small scalar math shared by the kernels and the routing policies. */
#ifndef EPMOE_FMATH_H
#define EPMOE_FMATH_H

#include <math.h>

/* The logistic function, without overflow for large |z|. */
static inline float
fmath_sigmoid(float z)
{
	if (z >= 0.0f)
		return 1.0f / (1.0f + expf(-z));
	float ez = expf(z);
	return ez / (1.0f + ez);
}

#endif
