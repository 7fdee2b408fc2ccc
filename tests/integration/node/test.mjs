// The epmoe router through the official OpenAI Node client: every call
// the client makes must parse, and the shapes must be what OpenAI's
// clients expect.  Usage: node test.mjs http://127.0.0.1:PORT
// Exit status 0 when every check passes, 1 on the first failure, 3 when
// the whole run takes too long.
import OpenAI from 'openai';

const base = process.argv[2];
if (!base) {
	console.error('usage: node test.mjs http://HOST:PORT');
	process.exit(2);
}
const watchdog = setTimeout(() => {
	console.error('openai_node: timed out');
	process.exit(3);
}, 90000);

const client = new OpenAI({
	baseURL: `${base}/v1`,
	apiKey: 'unused',
	timeout: 30000,
	maxRetries: 0,
});

let n_checks = 0;
function check(cond, what, detail) {
	n_checks++;
	if (!cond) {
		const d = detail === undefined ? '' : `: ${JSON.stringify(detail)}`;
		throw new Error(`check failed: ${what}${d}`);
	}
}

function checkUsage(u, max, what) {
	check(u && Number.isInteger(u.prompt_tokens) && u.prompt_tokens > 0,
		`${what}: usage.prompt_tokens > 0`, u);
	check(Number.isInteger(u.completion_tokens) && u.completion_tokens > 0 &&
		u.completion_tokens <= max, `${what}: 0 < usage.completion_tokens <= ${max}`, u);
	check(u.total_tokens === u.prompt_tokens + u.completion_tokens,
		`${what}: total_tokens = prompt + completion`, u);
}

const FINISH = ['stop', 'length'];

async function main() {
	// models.list
	const page = await client.models.list();
	const ids = [];
	for await (const m of page) {
		check(typeof m.id === 'string' && m.id.length > 0, 'model id is a string', m);
		check(m.object === 'model', 'model object is "model"', m);
		ids.push(m.id);
	}
	check(ids.length >= 1, 'at least one model', ids);
	const model = ids[0];

	// completions, not streamed
	const prompt = 'Hello world, the quick brown fox';
	const c = await client.completions.create({
		model, prompt, max_tokens: 12, temperature: 0,
	});
	check(c.object === 'text_completion', 'completion object', c.object);
	check(typeof c.id === 'string' && c.id.length > 0, 'completion id', c.id);
	check(c.model === model, 'completion model', c.model);
	check(Array.isArray(c.choices) && c.choices.length === 1, 'one choice', c.choices);
	check(typeof c.choices[0].text === 'string', 'choices[0].text is a string', c.choices[0]);
	check(FINISH.includes(c.choices[0].finish_reason), 'finish_reason', c.choices[0]);
	check(c.choices[0].index === 0, 'choice index 0', c.choices[0]);
	checkUsage(c.usage, 12, 'completion');
	if (c.choices[0].finish_reason === 'length')
		check(c.usage.completion_tokens === 12, 'length: all 12 tokens', c.usage);

	// completions, streamed: same text at temperature 0, a finish reason,
	// then the end of the stream
	const s = await client.completions.create({
		model, prompt, max_tokens: 12, temperature: 0, stream: true,
		stream_options: { include_usage: true },
	});
	let text = '', finish = null, usage = null, n_chunks = 0;
	for await (const ch of s) {
		n_chunks++;
		check(ch.object === 'text_completion', 'chunk object', ch);
		if (ch.usage)
			usage = ch.usage;
		if (ch.choices.length > 0) {
			check(typeof ch.choices[0].text === 'string', 'chunk text is a string', ch);
			text += ch.choices[0].text;
			if (ch.choices[0].finish_reason)
				finish = ch.choices[0].finish_reason;
		}
	}
	check(n_chunks >= 2, 'several chunks', n_chunks);
	check(text === c.choices[0].text, 'streamed text = whole text at temperature 0',
		{ text, whole: c.choices[0].text });
	check(finish === c.choices[0].finish_reason, 'streamed finish reason', finish);
	checkUsage(usage, 12, 'stream usage');
	check(usage.completion_tokens === c.usage.completion_tokens,
		'stream and whole: same completion_tokens', [usage, c.usage]);

	// chat, not streamed
	const messages = [
		{ role: 'system', content: 'You are terse.' },
		{ role: 'user', content: 'Say something.' },
	];
	const cc = await client.chat.completions.create({
		model, messages, max_tokens: 10, temperature: 0,
	});
	check(cc.object === 'chat.completion', 'chat object', cc.object);
	check(cc.choices.length === 1, 'chat: one choice', cc.choices);
	check(cc.choices[0].message.role === 'assistant', 'chat: assistant role', cc.choices[0]);
	check(typeof cc.choices[0].message.content === 'string', 'chat: content is a string',
		cc.choices[0]);
	check(FINISH.includes(cc.choices[0].finish_reason), 'chat finish_reason', cc.choices[0]);
	checkUsage(cc.usage, 10, 'chat');

	// chat, streamed with include_usage: role first, content deltas, a
	// final chunk with usage and no choices
	const cs = await client.chat.completions.create({
		model, messages, max_tokens: 10, temperature: 0, stream: true,
		stream_options: { include_usage: true },
	});
	let content = '', role = null, cfinish = null, cusage = null, last = null;
	for await (const ch of cs) {
		check(ch.object === 'chat.completion.chunk', 'chat chunk object', ch);
		last = ch;
		if (ch.choices.length > 0) {
			const d = ch.choices[0].delta;
			if (d.role)
				role = d.role;
			if (typeof d.content === 'string')
				content += d.content;
			if (ch.choices[0].finish_reason)
				cfinish = ch.choices[0].finish_reason;
			check(!ch.usage, 'usage only in the last chunk', ch);
		} else {
			cusage = ch.usage;
		}
	}
	check(role === 'assistant', 'chat stream: role assistant', role);
	check(content === cc.choices[0].message.content,
		'chat stream text = whole text at temperature 0',
		{ content, whole: cc.choices[0].message.content });
	check(cfinish === cc.choices[0].finish_reason, 'chat stream finish', cfinish);
	check(last && last.choices.length === 0 && last.usage, 'last chunk: usage, no choices',
		last);
	checkUsage(cusage, 10, 'chat stream usage');

	// a bad request is the client's BadRequestError (400) ...
	let err = null;
	try {
		await client.completions.create({ model, prompt, max_tokens: 4, temperature: 5 });
	} catch (e) {
		err = e;
	}
	check(err instanceof OpenAI.BadRequestError, 'temperature 5: BadRequestError',
		err && err.constructor.name);
	check(err.status === 400, 'BadRequestError status 400', err.status);
	check(typeof err.message === 'string' && err.message.includes('temperature'),
		'the message names the parameter', err.message);
	// ... and an unknown model its NotFoundError (404)
	err = null;
	try {
		await client.chat.completions.create({ model: 'no-such-model', messages });
	} catch (e) {
		err = e;
	}
	check(err instanceof OpenAI.NotFoundError, 'unknown model: NotFoundError',
		err && err.constructor.name);
}

main().then(() => {
	clearTimeout(watchdog);
	console.log(`openai_node: ${n_checks} checks passed`);
	process.exit(0);
}, (e) => {
	clearTimeout(watchdog);
	console.error(`openai_node: ${e.message}`);
	process.exit(1);
});
