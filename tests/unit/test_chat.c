/* Chat templates: family detection from real template snippets, and each
 * family's rendering of one conversation against the text written out by
 * hand from the family's format. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "err.h"
#include "testutil.h"
#include "tok.h"

/* system, user, assistant, user */
static const struct chat_msg conv[] = {
	{ "system", "You are helpful." },
	{ "user", "Hi there" },
	{ "assistant", "Hello!" },
	{ "user", "Joke?" },
};
#define N_CONV (sizeof(conv) / sizeof(conv[0]))

#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static void
expect_render(enum chat_tmpl t, bool gen, const char *want)
{
	char *out = NULL;
	int rc = chat_apply_tmpl(t, conv, N_CONV, gen, &out);

	ck_assert_int_eq(rc, 0);
	ck_assert_msg(strcmp(out, want) == 0, "%s:\n got  '%s'\n want '%s'",
	        chat_tmpl_name(t), out, want);
	free(out);
}

START_TEST(chatml_renders_turns_and_generation_prompt)
{
	static const char *const body =
	        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
	        "<|im_start|>user\nHi there<|im_end|>\n"
	        "<|im_start|>assistant\nHello!<|im_end|>\n"
	        "<|im_start|>user\nJoke?<|im_end|>\n";
	char want[512];

	expect_render(CHAT_TMPL_CHATML, false, body);
	snprintf(want, sizeof(want), "%s<|im_start|>assistant\n", body);
	expect_render(CHAT_TMPL_CHATML, true, want);
	/* an unknown family falls back to ChatML */
	expect_render(CHAT_TMPL_UNKNOWN, true, want);
}
END_TEST

START_TEST(llama2_variants_render)
{
	expect_render(CHAT_TMPL_LLAMA2, true,
	        "[INST] You are helpful.\nHi there [/INST]Hello!</s>"
	        "[INST] Joke? [/INST]");
	expect_render(CHAT_TMPL_LLAMA2_SYS, true,
	        "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there [/INST]"
	        "Hello!</s>[INST] Joke? [/INST]");
	expect_render(CHAT_TMPL_LLAMA2_SYS_BOS, false,
	        "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there [/INST]"
	        "Hello!</s><s>[INST] Joke? [/INST]");
}
END_TEST

START_TEST(llama2_strip_trims_contents)
{
	static const struct chat_msg m[] = {
		{ "system", "  sys \n" }, { "user", "\tq  " },
	};
	char *out;

	ck_assert_int_eq(chat_apply_tmpl(CHAT_TMPL_LLAMA2_SYS_STRIP, m, 2,
	        false, &out), 0);
	ck_assert_str_eq(out, "[INST] <<SYS>>\nsys\n<</SYS>>\n\nq [/INST]");
	free(out);
}
END_TEST

START_TEST(mistral_variants_render)
{
	expect_render(CHAT_TMPL_MISTRAL_V1, true,
	        " [INST] You are helpful.\n\nHi there [/INST] Hello!</s>"
	        " [INST] Joke? [/INST]");
	expect_render(CHAT_TMPL_MISTRAL_V3, true,
	        "[INST] You are helpful.\n\nHi there[/INST] Hello!</s>"
	        "[INST] Joke?[/INST]");
	expect_render(CHAT_TMPL_MISTRAL_V3_TEKKEN, true,
	        "[INST]You are helpful.\n\nHi there[/INST]Hello!</s>"
	        "[INST]Joke?[/INST]");
	expect_render(CHAT_TMPL_MISTRAL_V7, true,
	        "[SYSTEM_PROMPT] You are helpful.[/SYSTEM_PROMPT]"
	        "[INST] Hi there[/INST] Hello!</s>[INST] Joke?[/INST]");
}
END_TEST

START_TEST(llama3_renders_headers)
{
	expect_render(CHAT_TMPL_LLAMA3, true,
	        "<|start_header_id|>system<|end_header_id|>\n\n"
	        "You are helpful.<|eot_id|>"
	        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
	        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
	        "<|start_header_id|>user<|end_header_id|>\n\nJoke?<|eot_id|>"
	        "<|start_header_id|>assistant<|end_header_id|>\n\n");
}
END_TEST

START_TEST(role_tag_families_render)
{
	expect_render(CHAT_TMPL_PHI3, true,
	        "<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi there<|end|>\n"
	        "<|assistant|>\nHello!<|end|>\n<|user|>\nJoke?<|end|>\n"
	        "<|assistant|>\n");
	expect_render(CHAT_TMPL_PHI4, true,
	        "<|im_start|>system<|im_sep|>You are helpful.<|im_end|>"
	        "<|im_start|>user<|im_sep|>Hi there<|im_end|>"
	        "<|im_start|>assistant<|im_sep|>Hello!<|im_end|>"
	        "<|im_start|>user<|im_sep|>Joke?<|im_end|>"
	        "<|im_start|>assistant<|im_sep|>");
	expect_render(CHAT_TMPL_FALCON3, true,
	        "<|system|>\nYou are helpful.\n<|user|>\nHi there\n"
	        "<|assistant|>\nHello!\n<|user|>\nJoke?\n<|assistant|>\n");
	expect_render(CHAT_TMPL_ZEPHYR, true,
	        "<|system|>\nYou are helpful.<|endoftext|>\n"
	        "<|user|>\nHi there<|endoftext|>\n"
	        "<|assistant|>\nHello!<|endoftext|>\n"
	        "<|user|>\nJoke?<|endoftext|>\n<|assistant|>\n");
}
END_TEST

START_TEST(gemma_merges_system_into_user)
{
	expect_render(CHAT_TMPL_GEMMA, true,
	        "<start_of_turn>user\nYou are helpful.\n\nHi there<end_of_turn>\n"
	        "<start_of_turn>model\nHello!<end_of_turn>\n"
	        "<start_of_turn>user\nJoke?<end_of_turn>\n"
	        "<start_of_turn>model\n");
}
END_TEST

START_TEST(other_families_render)
{
	expect_render(CHAT_TMPL_VICUNA, true,
	        "You are helpful.\n\nUSER: Hi there\nASSISTANT: Hello!</s>\n"
	        "USER: Joke?\nASSISTANT:");
	expect_render(CHAT_TMPL_VICUNA_ORCA, true,
	        "SYSTEM: You are helpful.\nUSER: Hi there\nASSISTANT: Hello!</s>\n"
	        "USER: Joke?\nASSISTANT:");
	expect_render(CHAT_TMPL_DEEPSEEK, true,
	        "You are helpful.### Instruction:\nHi there\n### Response:\n"
	        "Hello!\n<|EOT|>\n### Instruction:\nJoke?\n### Response:\n");
	expect_render(CHAT_TMPL_DEEPSEEK2, true,
	        "You are helpful.\n\nUser: Hi there\n\nAssistant: Hello!" DS_EOS
	        "User: Joke?\n\nAssistant:");
	expect_render(CHAT_TMPL_DEEPSEEK3, true,
	        "You are helpful.\n\n" DS_USER "Hi there" DS_ASSISTANT "Hello!"
	        DS_EOS DS_USER "Joke?" DS_ASSISTANT);
	expect_render(CHAT_TMPL_COMMAND_R, true,
	        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are helpful."
	        "<|END_OF_TURN_TOKEN|>"
	        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
	        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello!<|END_OF_TURN_TOKEN|>"
	        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Joke?<|END_OF_TURN_TOKEN|>"
	        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
}
END_TEST

/* Template snippets in the style of the models' tokenizer_config.json. */
START_TEST(families_detected_from_jinja)
{
	static const struct {
		const char *tmpl;
		enum chat_tmpl want;
	} cases[] = {
		{ "{% for message in messages %}{{'<|im_start|>' + message['role']"
		  " + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
		  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>"
		  "assistant\\n' }}{% endif %}", CHAT_TMPL_CHATML },
		{ "{% for message in messages %}{{'<|im_start|>' + message['role']"
		  " + '<|im_sep|>' + message['content'] + '<|im_end|>'}}"
		  "{% endfor %}", CHAT_TMPL_PHI4 },
		{ "{% set loop_messages = messages %}{% for message in "
		  "loop_messages %}{% set content = '<|start_header_id|>' + "
		  "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
		  "| trim + '<|eot_id|>' %}{{ content }}{% endfor %}",
		  CHAT_TMPL_LLAMA3 },
		{ "{{ bos_token }}{% for message in messages %}{% if "
		  "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
		  "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
		  "message['content'] + eos_token}}{% endif %}{% endfor %}",
		  CHAT_TMPL_LLAMA2 },
		{ "{% if messages[0]['role'] == 'system' %}{% set system_message "
		  "= '<<SYS>>\\n' + messages[0]['content'] | trim + "
		  "'\\n<</SYS>>\\n\\n' %}{% endif %}{{ bos_token + '[INST] ' + "
		  "content.strip() + ' [/INST]' }}", CHAT_TMPL_LLAMA2_SYS_STRIP },
		{ "{%- if messages[0]['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' "
		  "+ messages[0]['content'] + '[/SYSTEM_PROMPT]' }}{%- endif %}"
		  "{{- '[INST]' + message['content'] + '[/INST]' }}",
		  CHAT_TMPL_MISTRAL_V7 },
		{ "{%- if message['role'] == 'user' %}{%- if tools is not none "
		  "%}{{- '[AVAILABLE_TOOLS] [' }}{%- endif %}{{- '[INST] ' + "
		  "message['content'] + '[/INST]' }}", CHAT_TMPL_MISTRAL_V3 },
		{ "{% for message in messages %}{% if message['role'] == 'system' "
		  "%}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
		  "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + "
		  "message['content'] + '<|end|>\\n'}}{% elif message['role'] == "
		  "'assistant' %}{{'<|assistant|>\\n' + message['content'] + "
		  "'<|end|>\\n'}}{% endif %}{% endfor %}", CHAT_TMPL_PHI3 },
		{ "{% for message in messages %}\\n{% if message['role'] == 'user' "
		  "%}\\n{{ '<|user|>\\n' + message['content'] + eos_token }}\\n"
		  "{% elif message['role'] == 'assistant' %}\\n{{ '<|assistant|>"
		  "\\n' + message['content'] + eos_token }}\\n{% endif %}",
		  CHAT_TMPL_ZEPHYR },
		{ "{{ bos_token }}{% for message in messages %}{{ "
		  "'<start_of_turn>' + role + '\\n' + message['content'] | trim + "
		  "'<end_of_turn>\\n' }}{% endfor %}", CHAT_TMPL_GEMMA },
		{ "{{'### Instruction:\\n' + message['content'] + '\\n'}}{{'### "
		  "Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}",
		  CHAT_TMPL_DEEPSEEK },
		{ "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + "
		  "message['content'] + '<|END_OF_TURN_TOKEN|>' }}",
		  CHAT_TMPL_COMMAND_R },
		{ "{{'Assistant: ' + message['content'] + eos_token }}",
		  CHAT_TMPL_DEEPSEEK2 },
		{ "{{'" DS_USER "' + message['content']}}{{'" DS_ASSISTANT "' + "
		  "content + '" DS_EOS "'}}", CHAT_TMPL_DEEPSEEK3 },
		{ "{{ message['content'] }}", CHAT_TMPL_UNKNOWN },
		{ "", CHAT_TMPL_UNKNOWN },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum chat_tmpl got = chat_detect(cases[i].tmpl);

		ck_assert_msg(got == cases[i].want, "case %zu: %s, want %s", i,
		        chat_tmpl_name(got), chat_tmpl_name(cases[i].want));
	}
	ck_assert_int_eq(chat_detect(NULL), CHAT_TMPL_UNKNOWN);
}
END_TEST

START_TEST(families_detected_by_name)
{
	for (int t = 1; t < CHAT_TMPL_COUNT; t++)
		ck_assert_int_eq(chat_detect(chat_tmpl_name((enum chat_tmpl)t)), t);
	ck_assert_str_eq(chat_tmpl_name(CHAT_TMPL_COUNT), "unknown");
}
END_TEST

START_TEST(chat_apply_falls_back_to_chatml)
{
	static const struct chat_msg m[] = { { "user", "x" } };
	char *out = NULL;

	ck_assert_int_eq(chat_apply(NULL, m, 1, true, &out), 0);
	ck_assert_str_eq(out, "<|im_start|>user\nx<|im_end|>\n"
	        "<|im_start|>assistant\n");
	free(out);
	ck_assert_int_eq(chat_apply("{{ weird }}", m, 1, false, &out), 0);
	ck_assert_str_eq(out, "<|im_start|>user\nx<|im_end|>\n");
	free(out);
	ck_assert_int_eq(chat_apply("gemma", m, 1, false, &out), 0);
	ck_assert_str_eq(out, "<start_of_turn>user\nx<end_of_turn>\n");
	free(out);
	/* no messages: only the generation prompt */
	ck_assert_int_eq(chat_apply("llama3", NULL, 0, true, &out), 0);
	ck_assert_str_eq(out, "<|start_header_id|>assistant<|end_header_id|>"
	        "\n\n");
	free(out);
	ck_assert_int_eq(chat_apply("llama3", NULL, 0, false, &out), 0);
	ck_assert_str_eq(out, "");
	free(out);
}
END_TEST

START_TEST(bad_messages_are_rejected)
{
	static const struct chat_msg tool[] = { { "tool", "x" } };
	static const struct chat_msg nul[] = { { "user", NULL } };
	static const struct chat_msg norole[] = { { NULL, "x" } };
	char *out = (char *)0x1;

	ck_assert_int_eq(chat_apply(NULL, tool, 1, true, &out), EPMOE_EINVAL);
	ck_assert_int_eq(chat_apply(NULL, nul, 1, true, &out), EPMOE_EINVAL);
	ck_assert_int_eq(chat_apply(NULL, norole, 1, true, &out), EPMOE_EINVAL);
	ck_assert_int_eq(chat_apply(NULL, NULL, 1, true, &out), EPMOE_EINVAL);
	ck_assert_ptr_eq(out, (char *)0x1);
	ck_assert_int_eq(chat_apply(NULL, tool, 0, true, NULL), EPMOE_EINVAL);
}
END_TEST

/* The rendered prompt, tokenized with special parsing, carries the
 * control tokens as single ids. */
START_TEST(rendered_prompt_tokenizes_markers_as_control_tokens)
{
	const char *toks[260];
	int32_t types[260];
	char bytes[256][8];
	struct tok_vocab v;
	struct tok *t = NULL;
	static const struct chat_msg m[] = { { "user", "hi" } };
	char *prompt;
	int32_t *ids;
	size_t n, n_ctl = 0, last = 0;

	for (int i = 0; i < 256; i++) {
		snprintf(bytes[i], sizeof(bytes[i]), "<0x%02X>", i);
		toks[i] = bytes[i];
		types[i] = TOK_TYPE_BYTE;
	}
	toks[256] = "<s>";
	toks[257] = "<|im_start|>";
	toks[258] = "<|im_end|>";
	toks[259] = "\xe2\x96\x81";
	types[256] = types[257] = types[258] = TOK_TYPE_CONTROL;
	types[259] = TOK_TYPE_NORMAL;
	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = 260;
	v.tokens = toks;
	v.types = types;
	v.bos_id = 256;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, NULL, 0), 0);
	ck_assert_int_eq(chat_apply("chatml", m, 1, true, &prompt), 0);
	ck_assert_int_eq(tok_encode(t, prompt, strlen(prompt),
	        TOK_ADD_BOS | TOK_PARSE_SPECIAL, &ids, &n), 0);
	ck_assert_int_eq(ids[0], 256);
	ck_assert_int_eq(ids[1], 257);
	for (size_t i = 0; i < n; i++) {
		n_ctl += ids[i] == 257 || ids[i] == 258;
		if (ids[i] == 257)
			last = i;
	}
	ck_assert_uint_eq(n_ctl, 3); /* start, end, start of the reply */
	/* then "▁assistant\n": ▁ and ten byte tokens */
	ck_assert_uint_eq(last, n - 12);
	ck_assert_int_eq(ids[last + 1], 259);
	free(ids);
	free(prompt);
	tok_free(t);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("chat");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, chatml_renders_turns_and_generation_prompt);
	tcase_add_test(tc, llama2_variants_render);
	tcase_add_test(tc, llama2_strip_trims_contents);
	tcase_add_test(tc, mistral_variants_render);
	tcase_add_test(tc, llama3_renders_headers);
	tcase_add_test(tc, role_tag_families_render);
	tcase_add_test(tc, gemma_merges_system_into_user);
	tcase_add_test(tc, other_families_render);
	tcase_add_test(tc, families_detected_from_jinja);
	tcase_add_test(tc, families_detected_by_name);
	tcase_add_test(tc, chat_apply_falls_back_to_chatml);
	tcase_add_test(tc, bad_messages_are_rejected);
	tcase_add_test(tc, rendered_prompt_tokenizes_markers_as_control_tokens);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
