'use strict';
// Shared setup of the openai SDK scripts: the client for the dpserve under test (its address,
// model and API key from the environment the gtest driver sets) and the expected outputs, which
// the driver computed with the offline engine (`dpserve generate --prompts-file`).
const fs = require('node:fs');
const assert = require('node:assert/strict');
const { OpenAI } = require('openai');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run these scripts through test_http_openai_sdk)`);
  return v;
};

const client = new OpenAI({
  baseURL: env('DPSERVE_BASE_URL') + '/v1',
  apiKey: env('DPSERVE_API_KEY'),
  maxRetries: 0,
  timeout: 60000,
});
const model = env('DPSERVE_MODEL');
const expected = JSON.parse(fs.readFileSync(env('DPSERVE_EXPECTED'), 'utf8'));

// Runs the named async checks in order; prints each result and exits 1 on the first failure.
async function run(checks) {
  for (const [name, fn] of Object.entries(checks)) {
    try {
      await fn();
      console.log(`ok   ${name}`);
    } catch (err) {
      console.log(`FAIL ${name}`);
      console.log(err && err.stack ? err.stack : err);
      process.exit(1);
    }
  }
}

// Calls fn, which must throw the SDK's APIError subclass `cls` with `status`; returns the error.
async function expectApiError(fn, cls, status) {
  let caught = null;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, 'the request should have failed');
  assert.ok(caught instanceof OpenAI.APIError, `not an APIError: ${caught}`);
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${caught.constructor.name}`);
  assert.equal(caught.status, status);
  assert.equal(typeof caught.message, 'string');
  return caught;
}

module.exports = { OpenAI, assert, client, model, expected, run, expectApiError };
