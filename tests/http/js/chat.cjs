'use strict';
// /v1/chat/completions and /v1/models through the official openai SDK: plain, streamed,
// n = 2, stop strings, logprobs, usage and errors, against the offline engine's outputs.
const { OpenAI, assert, client, model, expected, run, expectApiError } = require('./common.cjs');

const user = (content) => [{ role: 'user', content }];

// Streams a chat completion; returns per-choice texts, roles and finish reasons, and the usage.
async function stream(params) {
  const texts = [];
  const roles = [];
  const finish = [];
  const logprobs = [];
  let usage = null;
  const s = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) roles[c.index] = c.delta.role;
      if (c.delta.content) texts[c.index] = (texts[c.index] ?? '') + c.delta.content;
      if (c.logprobs) logprobs[c.index] = (logprobs[c.index] ?? []).concat(c.logprobs.content);
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { texts, roles, finish, usage, logprobs };
}

run({
  async models() {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    assert.deepEqual(ids, [model]);
    const m = await client.models.list();
    assert.equal(m.data[0].object, 'model');
  },
  async greedy() {
    const e = expected.chat_greedy[0];
    const r = await client.chat.completions.create({ model, messages: user(e.prompt), max_tokens: 24, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].message.content, e.text);
    assert.equal(r.choices[0].finish_reason, e.finish_reason.type);
    assert.equal(r.usage.prompt_tokens, e.prompt_tokens);
    assert.equal(r.usage.completion_tokens, e.completion_tokens);
    assert.equal(r.usage.total_tokens, e.prompt_tokens + e.completion_tokens);
  },
  async greedyStreamed() {
    const e = expected.chat_greedy[0];
    const r = await stream({ model, messages: user(e.prompt), max_completion_tokens: 24, temperature: 0 });
    assert.deepEqual(r.roles, ['assistant']);
    assert.deepEqual(r.texts, [e.text]);
    assert.deepEqual(r.finish, [e.finish_reason.type]);
    assert.equal(r.usage.completion_tokens, e.completion_tokens);
  },
  async nTwoSeeded() {
    const e = expected.chat_n2;
    const params = { model, messages: user(e[0].prompt), n: 2, seed: 9, temperature: 0.9, max_tokens: 16 };
    const r = await client.chat.completions.create(params);
    assert.equal(r.choices.length, 2);
    for (const c of r.choices) assert.equal(c.message.content, e[c.index].text);
    const s = await stream(params);
    assert.deepEqual(s.texts, [e[0].text, e[1].text]);
    assert.equal(s.usage.completion_tokens, e[0].completion_tokens + e[1].completion_tokens);
  },
  async stopStrings() {
    const e = expected.chat_stop[0];
    const params = { model, messages: user(e.prompt), stop: ['park', 'ball'], temperature: 0, max_tokens: 80 };
    const r = await client.chat.completions.create(params);
    assert.equal(r.choices[0].message.content, e.text);
    assert.equal(r.choices[0].finish_reason, e.finish_reason.type);
    const s = await stream(params);
    assert.deepEqual(s.texts, [e.text]);
  },
  async logprobs() {
    const e = expected.chat_greedy[0];
    const params = { model, messages: user(e.prompt), max_tokens: 24, temperature: 0, logprobs: true, top_logprobs: 2 };
    const r = await client.chat.completions.create(params);
    const content = r.choices[0].logprobs.content;
    assert.equal(content.length, r.usage.completion_tokens);
    assert.equal(content.map((t) => t.token).join(''), e.text);
    for (const t of content) {
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 2);
      assert.equal(t.top_logprobs[0].token, t.token);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
    }
    const s = await stream(params);
    assert.equal(s.logprobs[0].length, r.usage.completion_tokens);
  },
  async errors() {
    const role = await expectApiError(
      () => client.chat.completions.create({ model, messages: [{ role: 'wizard', content: 'hi' }] }),
      OpenAI.BadRequestError, 400);
    assert.equal(role.param, 'messages[0].role');
    await expectApiError(
      () => client.chat.completions.create({ model, messages: user('hi'), top_logprobs: 2 }),
      OpenAI.BadRequestError, 400);
    await expectApiError(
      () => client.chat.completions.create({ model, messages: [] }), OpenAI.BadRequestError, 400);
    await expectApiError(
      () => client.chat.completions.create({ model: 'gpt-4o', messages: user('hi') }), OpenAI.NotFoundError, 404);
  },
});
