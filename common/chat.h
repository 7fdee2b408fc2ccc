/* Chat templates: turns a conversation into the prompt text a model was
 * trained on.  The family is detected from the tokenizer.chat_template
 * metadata (a Jinja string) by distinctive substrings, as llama.cpp's
 * llm_chat_detect_template does; Jinja itself is not interpreted.  A
 * missing or unrecognised template renders as ChatML.
 *
 * The output is text: tokenize it with TOK_PARSE_SPECIAL so markers such as
 * <|im_start|> become their control tokens.  No family writes the BOS token
 * at the start (the tokenizer adds it); llama2/mistral write the "</s>"
 * that closes each assistant turn, as their templates do.
 *
 * What each family renders (S, U, A: system, user, assistant contents;
 * trim() strips surrounding whitespace; G: the generation prompt, only
 * with add_generation_prompt):
 *
 *   chatml      <|im_start|>ROLE\nCONTENT<|im_end|>\n per message;
 *               G = <|im_start|>assistant\n
 *   phi4        <|im_start|>ROLE<|im_sep|>CONTENT<|im_end|>;
 *               G = <|im_start|>assistant<|im_sep|>
 *   llama2      [INST] S\nU [/INST]A</s>[INST] U [/INST]...  (no G: the
 *               prompt ends with [/INST]).  Variants: llama2-sys puts S in
 *               <<SYS>>\nS\n<</SYS>>\n\n; llama2-sys-bos also starts each
 *               later turn with <s>; llama2-sys-strip trims every content
 *   mistral-v1  " [INST] S\n\nU [/INST] A</s>"
 *   mistral-v3  "[INST] S\n\nU[/INST] trim(A)</s>"
 *   mistral-v3-tekken  "[INST]S\n\nU[/INST]A</s>"
 *   mistral-v7  [SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U[/INST] A</s>
 *   llama3      <|start_header_id|>ROLE<|end_header_id|>\n\ntrim(C)<|eot_id|>;
 *               G = <|start_header_id|>assistant<|end_header_id|>\n\n
 *   phi3        <|ROLE|>\nC<|end|>\n; G = <|assistant|>\n
 *   falcon3     <|ROLE|>\nC\n; G = <|assistant|>\n
 *   zephyr      <|ROLE|>\nC<|endoftext|>\n; G = <|assistant|>\n
 *   gemma       S is put before the first user content (S\n\n); roles
 *               user and model: <start_of_turn>ROLE\ntrim(C)<end_of_turn>\n;
 *               G = <start_of_turn>model\n
 *   vicuna      S\n\nUSER: U\nASSISTANT: A</s>\n; G = ASSISTANT:
 *   vicuna-orca SYSTEM: S\nUSER: U\nASSISTANT: A</s>\n; G = ASSISTANT:
 *   deepseek    S### Instruction:\nU\n### Response:\nA\n<|EOT|>\n;
 *               G = ### Response:\n
 *   deepseek2   S\n\nUser: U\n\nAssistant: A<｜end▁of▁sentence｜>;
 *               G = Assistant:
 *   deepseek3   S\n\n<｜User｜>U<｜Assistant｜>A<｜end▁of▁sentence｜>;
 *               G = <｜Assistant｜>
 *   command-r   <|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>trim(S)
 *               <|END_OF_TURN_TOKEN|> (USER_TOKEN, CHATBOT_TOKEN for the
 *               others); G = <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>
 */
#ifndef EPMOE_CHAT_H
#define EPMOE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

/* One message; both strings borrowed.  role: "system", "user" or
 * "assistant". */
struct chat_msg {
	const char *role;
	const char *content;
};

enum chat_tmpl {
	CHAT_TMPL_UNKNOWN = 0,
	CHAT_TMPL_CHATML,
	CHAT_TMPL_PHI4,
	CHAT_TMPL_LLAMA2,
	CHAT_TMPL_LLAMA2_SYS,
	CHAT_TMPL_LLAMA2_SYS_BOS,
	CHAT_TMPL_LLAMA2_SYS_STRIP,
	CHAT_TMPL_MISTRAL_V1,
	CHAT_TMPL_MISTRAL_V3,
	CHAT_TMPL_MISTRAL_V3_TEKKEN,
	CHAT_TMPL_MISTRAL_V7,
	CHAT_TMPL_LLAMA3,
	CHAT_TMPL_PHI3,
	CHAT_TMPL_FALCON3,
	CHAT_TMPL_ZEPHYR,
	CHAT_TMPL_GEMMA,
	CHAT_TMPL_VICUNA,
	CHAT_TMPL_VICUNA_ORCA,
	CHAT_TMPL_DEEPSEEK,
	CHAT_TMPL_DEEPSEEK2,
	CHAT_TMPL_DEEPSEEK3,
	CHAT_TMPL_COMMAND_R,
	CHAT_TMPL_COUNT
};

/* The GGUF key holding a model's Jinja chat template. */
#define CHAT_TMPL_KEY "tokenizer.chat_template"

/* Detects the family of tmpl: either a family name ("chatml", "llama3",
 * "mistral-v7", ... as chat_tmpl_name gives) or a Jinja template.
 * CHAT_TMPL_UNKNOWN for NULL or an unrecognised template. */
enum chat_tmpl chat_detect(const char *tmpl);

/* The family's name ("unknown" for CHAT_TMPL_UNKNOWN or out of range). */
const char *chat_tmpl_name(enum chat_tmpl t);

/* Renders msgs[0..n) with family t (CHAT_TMPL_UNKNOWN: ChatML).  *out is a
 * NUL-terminated string, the caller's (free with free()).  Errors:
 * EPMOE_EINVAL (NULL out, a NULL role or content, a role other than
 * system/user/assistant), EPMOE_ENOMEM. */
int chat_apply_tmpl(enum chat_tmpl t, const struct chat_msg *msgs, size_t n,
        bool add_generation_prompt, char **out);

/* chat_apply_tmpl(chat_detect(tmpl_or_null), ...). */
int chat_apply(const char *tmpl_or_null, const struct chat_msg *msgs,
        size_t n, bool add_generation_prompt, char **out);

#endif
