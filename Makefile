# epmoe build.  Everything goes under build/ (build/san/ with SAN=1).
#
#   make            build all binaries into build/bin
#   make run        install missing Debian packages, build, start a router
#                   with two local workers on 127.0.0.1:8080
#   make test       install, build, run the Check suites and the
#                   integration tests (SAN=1: under ASan + UBSan)
#   make test-deploy  (root) the deployment tests: Kubernetes manifests
#                   offline, the multi-host testbed (network namespaces),
#                   the Docker image, compose and a one-node swarm
#   make bench      print the benchmark tables (make bench-testbed, root:
#                   the cost of the testbed's delay relay, the balancer on
#                   CPU-capped hosts, --spec all / off over 1 ms links)
#   make fuzz       build the libFuzzer targets (clang) and run each for
#                   FUZZ_SECONDS (default 30) on its seed corpus
#   make train      the routing study of train/ (hours; python3-torch)
#   make deps       install the missing Debian packages (apt-get; sudo when
#                   not root) and say what it installs
#   make clean      remove build/

SAN ?= 0
FUZZ ?= 0
ifeq ($(FUZZ),1)
B := build/fuzz
else ifeq ($(SAN),1)
B := build/san
else
B := build
endif
FUZZ_SECONDS ?= 30

CC ?= cc
ARCH ?= native
PYTHON ?= /usr/bin/python3

# Debian packages the build, the tests, `make run` and deploy/loadtest need
# (chromium: the live view's browser test; gnuplot-nox and jq: the load-test
# scripts and their test).
DEB_PKGS := build-essential pkg-config libuv1-dev libnng-dev libopenblas-dev \
	libprotobuf-c-dev protobuf-c-compiler check libcjson-dev \
	libhttp-parser-dev libpcre2-dev libcurl4-openssl-dev curl openssl \
	clang libclang-rt-dev llvm chromium gnuplot-nox jq
# Debian packages of `make test-deploy` only (installed by it).
DEB_DEPLOY_PKGS := iptables docker.io docker-compose debootstrap python3-yaml
# pkg-config modules; nng (CMake config only) and http-parser (no .pc) are
# linked directly.  Recursively expanded so they are read after `deps`.
PKGS := libuv openblas libprotobuf-c check libcjson libpcre2-8 libcurl
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS = $(shell pkg-config --libs $(PKGS)) -lnng -lhttp_parser -lm -lpthread

WARN := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wpointer-arith \
	-Wstrict-prototypes -Wmissing-prototypes
OPT := -O2 -g -march=$(ARCH) -fno-strict-aliasing
ifeq ($(SAN),1)
OPT := -O1 -g -march=$(ARCH) -fno-omit-frame-pointer -fno-strict-aliasing \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-sanitize=alignment
SAN_LD := -fsanitize=address,undefined
endif
# libFuzzer builds: everything compiled by clang with coverage
# instrumentation and ASan + UBSan; only the targets link libFuzzer.
ifeq ($(FUZZ),1)
CC := clang
OPT := -O1 -g -march=$(ARCH) -fno-omit-frame-pointer -fno-strict-aliasing \
	-fsanitize=fuzzer-no-link,address,undefined \
	-fno-sanitize-recover=undefined -fno-sanitize=alignment
SAN_LD := -fsanitize=address,undefined
endif
# Each library sees only the headers it may use: common sees common and the
# generated proto; worker, server and client see common and their own
# folder (so an include of server/ from common/ fails to compile); the
# tests see everything.  The folder is the first component of the source.
INC_common := -Icommon -I$(B)/gen
INC_worker := -Icommon -Iworker -I$(B)/gen
INC_server := -Icommon -Iserver -I$(B)/gen
INC_client := -Icommon -Iclient -I$(B)/gen
INC_deploy :=
INC_tests := -Icommon -Iserver -Iworker -Iclient -Itests/unit -I$(B)/gen
CPPFLAGS_ALL = $(INC_$(firstword $(subst /, ,$<))) $(PKG_CFLAGS) \
	-D_GNU_SOURCE -MMD -MP
CFLAGS_ALL = -std=gnu11 $(OPT) $(WARN) $(CFLAGS)
LDFLAGS_ALL = $(SAN_LD) $(LDFLAGS)

GEN_C := $(B)/gen/epmoe.pb-c.c
GEN_H := $(B)/gen/epmoe.pb-c.h
# The dashboard page, embedded in the router as a byte array, and the git
# commit the load generator writes into its results.
DASH_C := $(B)/gen/dashboard_html.c
GIT_H := $(B)/gen/git_commit.h

COMMON_SRC := $(wildcard common/*.c)
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
WORKER_SRC := $(filter-out worker/main.c,$(wildcard worker/*.c))
CLIENT_SRC := $(filter-out client/main.c,$(wildcard client/*.c))
TEST_SRC := $(wildcard tests/unit/test_*.c)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
TEST_SUPPORT := $(filter-out $(TEST_SRC),$(wildcard tests/unit/*.c))

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIB_COMMON := $(B)/lib/libepmoe.a
LIB_SERVER := $(B)/lib/libepmoe-server.a
LIB_WORKER := $(B)/lib/libepmoe-worker.a
LIB_CLIENT := $(B)/lib/libepmoe-client.a
# the server library again after the client: `epmoe bench balance` replays
# traces through the router's placement code (server/bal_sim.c)
LIBS_ALL := $(LIB_SERVER) $(LIB_WORKER) $(LIB_CLIENT) $(LIB_SERVER) $(LIB_COMMON)

BINS := $(B)/bin/epmoe $(B)/bin/epmoe-router $(B)/bin/epmoe-worker
# the testbed's delay relay (deploy/testbed/relay.c; not installed)
RELAY := $(B)/bin/epmoe-relay
TESTS := $(patsubst tests/unit/%.c,$(B)/tests/%,$(TEST_SRC))
FUZZERS := $(patsubst tests/fuzz/%.c,$(B)/bin/%,$(FUZZ_SRC))

.PHONY: all deps run test test-only test-deploy \
	bench bench-only bench-testbed clean check-deps train FORCE \
	fuzz fuzz-build fuzz-only fuzz-seeds
.DEFAULT_GOAL := all
.SECONDARY:

all: $(BINS) $(RELAY) $(TESTS)

deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -z "$$missing" ]; then \
		echo "deps: all $(words $(DEB_PKGS)) Debian packages are installed"; \
	else \
		if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
		echo "deps: installing missing Debian packages:$$missing"; \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

# protoc-c writes next to the proto's relative path; keep generated code in build/.
$(GEN_C) $(GEN_H): proto/epmoe.proto
	@mkdir -p $(B)/gen
	protoc-c --proto_path=proto --c_out=$(B)/gen proto/epmoe.proto

$(B)/obj/$(GEN_C:.c=.o): $(GEN_C)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -I$(B)/gen $(PKG_CFLAGS) -c $< -o $@

# The page as a C array: od prints the bytes, sed makes them initialisers.
$(DASH_C): server/dashboard.html
	@mkdir -p $(dir $@)
	@{ echo '/* Generated from server/dashboard.html by make: do not edit. */'; \
	  echo '#include <stddef.h>'; \
	  echo 'const unsigned char dash_page_html[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '0x00 };'; \
	  echo 'const size_t dash_page_html_len = sizeof(dash_page_html) - 1;'; } > $@.tmp
	@mv $@.tmp $@

$(B)/obj/$(DASH_C:.c=.o): $(DASH_C)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -c $< -o $@

# Rewritten only when the commit (or the tree's dirtiness) changes.
$(GIT_H): FORCE
	@mkdir -p $(dir $@)
	@c=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); \
	if [ "$$c" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then c="$$c-dirty"; fi; \
	printf '/* Generated by make. */\n#define EPMOE_GIT_COMMIT "%s"\n' "$$c" > $@.tmp; \
	if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

$(B)/obj/client/bench_server.o: $(GIT_H)

$(B)/obj/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -c $< -o $@

# The expert combine rounds each weighted expert output before adding it
# (no FMA contraction), so local mode's sums equal the router's sums of
# the workers' partial sums bit for bit (common/moe_ffn.c).
$(B)/obj/common/moe_ffn.o: CFLAGS_ALL += -ffp-contract=off

$(LIB_COMMON): $(call obj,$(COMMON_SRC)) $(B)/obj/$(GEN_C:.c=.o)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^
$(LIB_SERVER): $(call obj,$(SERVER_SRC)) $(B)/obj/$(DASH_C:.c=.o)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^
$(LIB_WORKER): $(call obj,$(WORKER_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^
$(LIB_CLIENT): $(call obj,$(CLIENT_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(B)/bin/epmoe: $(B)/obj/client/main.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)
$(B)/bin/epmoe-router: $(B)/obj/server/main.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)
$(B)/bin/epmoe-worker: $(B)/obj/worker/main.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

$(RELAY): $(B)/obj/deploy/testbed/relay.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(PKG_LIBS)

$(B)/tests/%: $(B)/obj/tests/unit/%.o $(call obj,$(TEST_SUPPORT)) $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(call obj,$(TEST_SUPPORT)) $(LIBS_ALL) $(PKG_LIBS)

$(B)/bin/fuzz_%: $(B)/obj/tests/fuzz/fuzz_%.o $(LIB_SERVER) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) -fsanitize=fuzzer,address,undefined $(LDFLAGS) -o $@ $< $(LIB_SERVER) $(LIB_COMMON) $(PKG_LIBS)

# The allocation-failure suite routes the project's allocations through
# its test allocator.
$(B)/tests/test_failalloc: LDFLAGS_ALL += -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=strndup

# The public targets install what is missing first, then re-enter make so the
# pkg-config flags are read with the packages present.
run: deps
	@$(MAKE) --no-print-directory $(BINS)
	@EPMOE_BUILD=$(B) MODEL="$(MODEL)" sh deploy/run-local.sh

test: deps
	@$(MAKE) --no-print-directory test-only

test-only: all
	@EPMOE_BUILD=$(B) SAN=$(SAN) sh tests/run.sh

test-deploy: deps
	@$(MAKE) --no-print-directory all
	@EPMOE_BUILD=$(B) DEB_DEPLOY_PKGS="$(DEB_DEPLOY_PKGS)" sh tests/deploy/run.sh

bench: deps
	@$(MAKE) --no-print-directory bench-only

# (root) the testbed's delay relay against plain links, alternating; the
# balancer off / eplb / llep / all on CPU-capped worker hosts; the
# speculative pre-scheduler (--spec all / off) over 1 ms round trips
bench-testbed: all
	@EPMOE_BIN=$(CURDIR)/$(B)/bin sh tests/testbed/bench/relay_cost.sh
	@EPMOE_BIN=$(CURDIR)/$(B)/bin sh tests/testbed/bench/balance.sh
	@EPMOE_BIN=$(CURDIR)/$(B)/bin sh tests/testbed/bench/spec.sh

bench-only: $(BINS)
	@EPMOE_BUILD=$(B) sh client/bench/run.sh

fuzz: deps
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-only

fuzz-build:
	@$(MAKE) --no-print-directory FUZZ=1 $(patsubst tests/fuzz/%.c,build/fuzz/bin/%,$(FUZZ_SRC))

# Regenerates the binary seeds (wire frames, small GGUF models) in
# tests/fuzz/corpus; they are committed.
fuzz-seeds: $(LIBS_ALL) $(B)/obj/tests/fuzz/mkseeds.o
	@mkdir -p $(B)/bin
	$(CC) $(LDFLAGS_ALL) -o $(B)/bin/mkseeds $(B)/obj/tests/fuzz/mkseeds.o $(LIBS_ALL) $(PKG_LIBS)
	@mkdir -p tests/fuzz/corpus/wire tests/fuzz/corpus/gguf
	$(B)/bin/mkseeds tests/fuzz/corpus

fuzz-only: $(FUZZERS)
	@EPMOE_BUILD=$(B) FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh

# The routing study (train/README.md): needs the epmoe CLI for its
# perplexity measurements.
train: deps
	@$(MAKE) --no-print-directory $(B)/bin/epmoe
	$(MAKE) -C train EPMOE=$(abspath $(B)/bin/epmoe)

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
