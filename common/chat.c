/* Chat template families: detection by substrings of the Jinja template
 * and rendering of each family by hand (see chat.h for what each writes).
 * Must not evaluate Jinja or depend on the tokenizer.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "err.h"

static const char *const tmpl_names[CHAT_TMPL_COUNT] = {
	[CHAT_TMPL_UNKNOWN] = "unknown",
	[CHAT_TMPL_CHATML] = "chatml",
	[CHAT_TMPL_PHI4] = "phi4",
	[CHAT_TMPL_LLAMA2] = "llama2",
	[CHAT_TMPL_LLAMA2_SYS] = "llama2-sys",
	[CHAT_TMPL_LLAMA2_SYS_BOS] = "llama2-sys-bos",
	[CHAT_TMPL_LLAMA2_SYS_STRIP] = "llama2-sys-strip",
	[CHAT_TMPL_MISTRAL_V1] = "mistral-v1",
	[CHAT_TMPL_MISTRAL_V3] = "mistral-v3",
	[CHAT_TMPL_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
	[CHAT_TMPL_MISTRAL_V7] = "mistral-v7",
	[CHAT_TMPL_LLAMA3] = "llama3",
	[CHAT_TMPL_PHI3] = "phi3",
	[CHAT_TMPL_FALCON3] = "falcon3",
	[CHAT_TMPL_ZEPHYR] = "zephyr",
	[CHAT_TMPL_GEMMA] = "gemma",
	[CHAT_TMPL_VICUNA] = "vicuna",
	[CHAT_TMPL_VICUNA_ORCA] = "vicuna-orca",
	[CHAT_TMPL_DEEPSEEK] = "deepseek",
	[CHAT_TMPL_DEEPSEEK2] = "deepseek2",
	[CHAT_TMPL_DEEPSEEK3] = "deepseek3",
	[CHAT_TMPL_COMMAND_R] = "command-r",
};

#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

const char *
chat_tmpl_name(enum chat_tmpl t)
{
	if ((unsigned)t >= CHAT_TMPL_COUNT)
		return "unknown";
	return tmpl_names[t];
}

static bool
has(const char *s, const char *sub)
{
	return strstr(s, sub) != NULL;
}

enum chat_tmpl
chat_detect(const char *s)
{
	if (s == NULL)
		return CHAT_TMPL_UNKNOWN;
	for (int i = 1; i < CHAT_TMPL_COUNT; i++) {
		if (strcmp(s, tmpl_names[i]) == 0)
			return (enum chat_tmpl)i;
	}
	/* the order matters: several families share markers */
	if (has(s, "<|im_start|>"))
		return has(s, "<|im_sep|>") ? CHAT_TMPL_PHI4 : CHAT_TMPL_CHATML;
	if (strncmp(s, "mistral", 7) == 0 || has(s, "[INST]")) {
		if (has(s, "[SYSTEM_PROMPT]"))
			return CHAT_TMPL_MISTRAL_V7;
		/* the official v1 / v3 / v3-tekken templates */
		if (has(s, "' [INST] ' + system_message") ||
		        has(s, "[AVAILABLE_TOOLS]")) {
			if (has(s, " [INST]"))
				return CHAT_TMPL_MISTRAL_V1;
			if (has(s, "\"[INST]\""))
				return CHAT_TMPL_MISTRAL_V3_TEKKEN;
			return CHAT_TMPL_MISTRAL_V3;
		}
		if (has(s, "content.strip()"))
			return CHAT_TMPL_LLAMA2_SYS_STRIP;
		if (has(s, "bos_token + '[INST]"))
			return CHAT_TMPL_LLAMA2_SYS_BOS;
		if (has(s, "<<SYS>>"))
			return CHAT_TMPL_LLAMA2_SYS;
		return CHAT_TMPL_LLAMA2;
	}
	if (has(s, "<|assistant|>") && has(s, "<|end|>"))
		return CHAT_TMPL_PHI3;
	if (has(s, "<|assistant|>") && has(s, "<|user|>") && has(s, "</s>"))
		return CHAT_TMPL_FALCON3;
	if (has(s, "<|user|>"))
		return CHAT_TMPL_ZEPHYR;
	if (has(s, "<start_of_turn>"))
		return CHAT_TMPL_GEMMA;
	if (has(s, "USER: ") && has(s, "ASSISTANT: "))
		return has(s, "SYSTEM: ") ? CHAT_TMPL_VICUNA_ORCA :
		        CHAT_TMPL_VICUNA;
	if (has(s, "### Instruction:") && has(s, "<|EOT|>"))
		return CHAT_TMPL_DEEPSEEK;
	if (has(s, "<|START_OF_TURN_TOKEN|>") && has(s, "<|USER_TOKEN|>"))
		return CHAT_TMPL_COMMAND_R;
	if (has(s, "<|start_header_id|>") && has(s, "<|end_header_id|>"))
		return CHAT_TMPL_LLAMA3;
	if (has(s, "'Assistant: ' + message['content'] + eos_token"))
		return CHAT_TMPL_DEEPSEEK2;
	if (has(s, DS_ASSISTANT) && has(s, DS_USER) && has(s, DS_EOS))
		return CHAT_TMPL_DEEPSEEK3;
	return CHAT_TMPL_UNKNOWN;
}

/* ---- output buffer ---- */

struct sbuf {
	char *p;
	size_t n, cap;
	int err;
};

static void
put_n(struct sbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap < b->n + n + 1)
			cap *= 2;
		if ((p = realloc(b->p, cap)) == NULL) {
			b->err = EPMOE_ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void
put(struct sbuf *b, const char *s)
{
	put_n(b, s, strlen(s));
}

/* Writes s without leading and trailing whitespace. */
static void
put_trim(struct sbuf *b, const char *s)
{
	size_t n = strlen(s);

	while (n > 0 && isspace((unsigned char)*s)) {
		s++;
		n--;
	}
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		n--;
	put_n(b, s, n);
}

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

static int
role_of(const char *r)
{
	if (r == NULL)
		return -1;
	if (strcmp(r, "system") == 0)
		return ROLE_SYSTEM;
	if (strcmp(r, "user") == 0)
		return ROLE_USER;
	if (strcmp(r, "assistant") == 0)
		return ROLE_ASSISTANT;
	return -1;
}

/* ---- families ---- */

static void
render_llama2(struct sbuf *b, enum chat_tmpl t, const struct chat_msg *m,
        size_t n)
{
	bool sys_block = t != CHAT_TMPL_LLAMA2;
	bool bos_inside = t == CHAT_TMPL_LLAMA2_SYS_BOS;
	bool strip = t == CHAT_TMPL_LLAMA2_SYS_STRIP;
	bool in_turn = true; /* the first [INST] is written up front */

	put(b, "[INST] ");
	for (size_t i = 0; i < n; i++) {
		int r = role_of(m[i].role);

		if (!in_turn) {
			put(b, bos_inside ? "<s>[INST] " : "[INST] ");
			in_turn = true;
		}
		if (r == ROLE_SYSTEM && sys_block)
			put(b, "<<SYS>>\n");
		if (strip)
			put_trim(b, m[i].content);
		else
			put(b, m[i].content);
		if (r == ROLE_SYSTEM) {
			put(b, sys_block ? "\n<</SYS>>\n\n" : "\n");
		} else if (r == ROLE_USER) {
			put(b, " [/INST]");
		} else {
			put(b, "</s>");
			in_turn = false;
		}
	}
}

static void
render_mistral(struct sbuf *b, enum chat_tmpl t, const struct chat_msg *m,
        size_t n)
{
	const char *lead = t == CHAT_TMPL_MISTRAL_V1 ? " " : "";
	const char *trail = t == CHAT_TMPL_MISTRAL_V3_TEKKEN ? "" : " ";
	bool in_turn = false;

	for (size_t i = 0; i < n; i++) {
		int r = role_of(m[i].role);

		if (!in_turn) {
			put(b, lead);
			put(b, "[INST]");
			put(b, trail);
			in_turn = true;
		}
		if (r == ROLE_SYSTEM) {
			put(b, m[i].content);
			put(b, "\n\n");
		} else if (r == ROLE_USER) {
			put(b, m[i].content);
			put(b, lead);
			put(b, "[/INST]");
		} else {
			put(b, trail);
			if (t == CHAT_TMPL_MISTRAL_V3)
				put_trim(b, m[i].content);
			else
				put(b, m[i].content);
			put(b, "</s>");
			in_turn = false;
		}
	}
}

static void
render_gemma(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen)
{
	struct sbuf sys = { 0 };

	/* gemma has no system role: its text joins the next user turn */
	for (size_t i = 0; i < n; i++) {
		int r = role_of(m[i].role);

		if (r == ROLE_SYSTEM) {
			put_trim(&sys, m[i].content);
			continue;
		}
		put(b, "<start_of_turn>");
		put(b, r == ROLE_ASSISTANT ? "model" : "user");
		put(b, "\n");
		if (r == ROLE_USER && sys.n > 0) {
			put_n(b, sys.p, sys.n);
			put(b, "\n\n");
			sys.n = 0;
		}
		put_trim(b, m[i].content);
		put(b, "<end_of_turn>\n");
	}
	if (sys.err)
		b->err = sys.err;
	free(sys.p);
	if (gen)
		put(b, "<start_of_turn>model\n");
}

/* Families where each message is PREFIX[role] CONTENT SUFFIX[role]. */
struct simple {
	const char *pre[3], *post[3]; /* by enum role */
	bool trim;
	const char *gen;
};

static const struct simple simple_deepseek = {
	{ "", "### Instruction:\n", "### Response:\n" },
	{ "", "\n", "\n<|EOT|>\n" }, false, "### Response:\n" };
static const struct simple simple_deepseek2 = {
	{ "", "User: ", "Assistant: " },
	{ "\n\n", "\n\n", DS_EOS }, false, "Assistant:" };
static const struct simple simple_deepseek3 = {
	{ "", DS_USER, DS_ASSISTANT },
	{ "\n\n", "", DS_EOS }, false, DS_ASSISTANT };
static const struct simple simple_vicuna = {
	{ "", "USER: ", "ASSISTANT: " },
	{ "\n\n", "\n", "</s>\n" }, false, "ASSISTANT:" };
static const struct simple simple_vicuna_orca = {
	{ "SYSTEM: ", "USER: ", "ASSISTANT: " },
	{ "\n", "\n", "</s>\n" }, false, "ASSISTANT:" };
static const struct simple simple_command_r = {
	{ "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>",
	  "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
	  "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" },
	{ "<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
	  "<|END_OF_TURN_TOKEN|>" },
	true, "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" };
static const struct simple simple_mistral_v7 = {
	{ "[SYSTEM_PROMPT] ", "[INST] ", " " },
	{ "[/SYSTEM_PROMPT]", "[/INST]", "</s>" }, false, NULL };

static void
render_simple(struct sbuf *b, const struct simple *f, const struct chat_msg *m,
        size_t n, bool gen)
{
	for (size_t i = 0; i < n; i++) {
		int r = role_of(m[i].role);

		put(b, f->pre[r]);
		if (f->trim)
			put_trim(b, m[i].content);
		else
			put(b, m[i].content);
		put(b, f->post[r]);
	}
	if (gen && f->gen)
		put(b, f->gen);
}

/* Families that write the role name itself: OPEN role MID content CLOSE. */
static void
render_named(struct sbuf *b, const char *open, const char *mid,
        const char *close, bool trim, const char *gen, const struct chat_msg *m,
        size_t n, bool add_gen)
{
	for (size_t i = 0; i < n; i++) {
		put(b, open);
		put(b, m[i].role);
		put(b, mid);
		if (trim)
			put_trim(b, m[i].content);
		else
			put(b, m[i].content);
		put(b, close);
	}
	if (add_gen)
		put(b, gen);
}

int
chat_apply_tmpl(enum chat_tmpl t, const struct chat_msg *msgs, size_t n,
        bool add_generation_prompt, char **out)
{
	struct sbuf b = { 0 };
	bool g = add_generation_prompt;

	if (out == NULL || (msgs == NULL && n > 0) ||
	        (unsigned)t >= CHAT_TMPL_COUNT)
		return EPMOE_EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (role_of(msgs[i].role) < 0 || msgs[i].content == NULL)
			return EPMOE_EINVAL;
	}
	put(&b, ""); /* an empty conversation is still a string */
	switch (t) {
	case CHAT_TMPL_UNKNOWN:
	case CHAT_TMPL_CHATML:
		render_named(&b, "<|im_start|>", "\n", "<|im_end|>\n", false,
		        "<|im_start|>assistant\n", msgs, n, g);
		break;
	case CHAT_TMPL_PHI4:
		render_named(&b, "<|im_start|>", "<|im_sep|>", "<|im_end|>",
		        false, "<|im_start|>assistant<|im_sep|>", msgs, n, g);
		break;
	case CHAT_TMPL_LLAMA2:
	case CHAT_TMPL_LLAMA2_SYS:
	case CHAT_TMPL_LLAMA2_SYS_BOS:
	case CHAT_TMPL_LLAMA2_SYS_STRIP:
		render_llama2(&b, t, msgs, n);
		break;
	case CHAT_TMPL_MISTRAL_V1:
	case CHAT_TMPL_MISTRAL_V3:
	case CHAT_TMPL_MISTRAL_V3_TEKKEN:
		render_mistral(&b, t, msgs, n);
		break;
	case CHAT_TMPL_MISTRAL_V7:
		render_simple(&b, &simple_mistral_v7, msgs, n, g);
		break;
	case CHAT_TMPL_LLAMA3:
		render_named(&b, "<|start_header_id|>", "<|end_header_id|>\n\n",
		        "<|eot_id|>", true,
		        "<|start_header_id|>assistant<|end_header_id|>\n\n", msgs,
		        n, g);
		break;
	case CHAT_TMPL_PHI3:
		render_named(&b, "<|", "|>\n", "<|end|>\n", false,
		        "<|assistant|>\n", msgs, n, g);
		break;
	case CHAT_TMPL_FALCON3:
		render_named(&b, "<|", "|>\n", "\n", false, "<|assistant|>\n",
		        msgs, n, g);
		break;
	case CHAT_TMPL_ZEPHYR:
		render_named(&b, "<|", "|>\n", "<|endoftext|>\n", false,
		        "<|assistant|>\n", msgs, n, g);
		break;
	case CHAT_TMPL_GEMMA:
		render_gemma(&b, msgs, n, g);
		break;
	case CHAT_TMPL_VICUNA:
		render_simple(&b, &simple_vicuna, msgs, n, g);
		break;
	case CHAT_TMPL_VICUNA_ORCA:
		render_simple(&b, &simple_vicuna_orca, msgs, n, g);
		break;
	case CHAT_TMPL_DEEPSEEK:
		render_simple(&b, &simple_deepseek, msgs, n, g);
		break;
	case CHAT_TMPL_DEEPSEEK2:
		render_simple(&b, &simple_deepseek2, msgs, n, g);
		break;
	case CHAT_TMPL_DEEPSEEK3:
		render_simple(&b, &simple_deepseek3, msgs, n, g);
		break;
	case CHAT_TMPL_COMMAND_R:
		render_simple(&b, &simple_command_r, msgs, n, g);
		break;
	case CHAT_TMPL_COUNT:
		break;
	}
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	return 0;
}

int
chat_apply(const char *tmpl_or_null, const struct chat_msg *msgs, size_t n,
        bool add_generation_prompt, char **out)
{
	return chat_apply_tmpl(chat_detect(tmpl_or_null), msgs, n,
	        add_generation_prompt, out);
}
