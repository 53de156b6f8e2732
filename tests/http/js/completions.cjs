'use strict';
// /v1/completions through the official openai SDK: plain, streamed, n = 2, stop strings,
// logprobs, usage and errors, against the offline engine's outputs.
const { OpenAI, assert, client, model, expected, run, expectApiError } = require('./common.cjs');

// Streams a completion; returns per-choice texts and finish reasons, the usage chunk, the chunks.
async function stream(params) {
  const texts = [];
  const finish = [];
  let usage = null;
  let chunks = 0;
  const s = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    chunks += 1;
    assert.equal(chunk.object, 'text_completion');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      texts[c.index] = (texts[c.index] ?? '') + c.text;
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { texts, finish, usage, chunks };
}

run({
  async greedy() {
    const e = expected.completion_greedy[0];
    const r = await client.completions.create({ model, prompt: e.prompt, max_tokens: 24, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.match(r.id, /^cmpl-/);
    assert.equal(r.model, model);
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].text, e.text);
    assert.equal(r.choices[0].finish_reason, e.finish_reason.type);
    assert.equal(r.usage.prompt_tokens, e.prompt_tokens);
    assert.equal(r.usage.completion_tokens, e.completion_tokens);
    assert.equal(r.usage.total_tokens, e.prompt_tokens + e.completion_tokens);
  },
  async greedyStreamed() {
    const e = expected.completion_greedy[0];
    const r = await stream({ model, prompt: e.prompt, max_tokens: 24, temperature: 0 });
    assert.ok(r.chunks >= 3);
    assert.deepEqual(r.texts, [e.text]);
    assert.deepEqual(r.finish, [e.finish_reason.type]);
    assert.equal(r.usage.completion_tokens, e.completion_tokens);
    assert.equal(r.usage.prompt_tokens, e.prompt_tokens);
  },
  async nTwoSeeded() {
    const e = expected.completion_n2;
    const params = { model, prompt: e[0].prompt, n: 2, seed: 42, temperature: 0.8, max_tokens: 20 };
    const r = await client.completions.create(params);
    assert.equal(r.choices.length, 2);
    for (const c of r.choices) assert.equal(c.text, e[c.index].text);
    assert.equal(r.usage.completion_tokens, e[0].completion_tokens + e[1].completion_tokens);
    const s = await stream(params);
    assert.deepEqual(s.texts, [e[0].text, e[1].text]);
    assert.equal(s.usage.completion_tokens, r.usage.completion_tokens);
  },
  async stopStrings() {
    const e = expected.completion_stop[0];
    const params = { model, prompt: e.prompt, stop: ['.'], temperature: 0, max_tokens: 60 };
    const r = await client.completions.create(params);
    assert.equal(r.choices[0].text, e.text);
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.ok(!r.choices[0].text.includes('.'));
    const s = await stream(params);
    assert.deepEqual(s.texts, [e.text]);
    assert.deepEqual(s.finish, ['stop']);
  },
  async logprobs() {
    const e = expected.completion_greedy[0];
    const r = await client.completions.create({ model, prompt: e.prompt, max_tokens: 24, temperature: 0, logprobs: 2 });
    const lp = r.choices[0].logprobs;
    assert.equal(lp.tokens.length, r.usage.completion_tokens);
    assert.equal(lp.token_logprobs.length, lp.tokens.length);
    assert.equal(lp.top_logprobs.length, lp.tokens.length);
    assert.equal(lp.text_offset.length, lp.tokens.length);
    assert.equal(lp.tokens.join(''), e.text);
    lp.token_logprobs.forEach((v, i) => {
      assert.ok(v <= 0);
      assert.ok(lp.tokens[i] in lp.top_logprobs[i]);
    });
  },
  async errors() {
    const tooLong = await expectApiError(
      () => client.completions.create({ model, prompt: 'Once', max_tokens: 100000 }), OpenAI.BadRequestError, 400);
    assert.match(tooLong.message, /context length/);
    assert.equal(tooLong.param, 'prompt');
    const badN = await expectApiError(
      () => client.completions.create({ model, prompt: 'Once', n: 0 }), OpenAI.BadRequestError, 400);
    assert.equal(badN.param, 'n');
    await expectApiError(
      () => client.completions.create({ model: 'no-such-model', prompt: 'Once' }), OpenAI.NotFoundError, 404);
    const noKey = new OpenAI({ baseURL: client.baseURL, apiKey: 'wrong-key', maxRetries: 0 });
    await expectApiError(
      () => noKey.completions.create({ model, prompt: 'Once' }), OpenAI.AuthenticationError, 401);
  },
});
