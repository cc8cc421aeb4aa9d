// onnxpack's second runtime: a graph run in onnxruntime-node, for `onnxpack check`.
// Usage: node run.js MODEL.onnx FEED.json. FEED.json maps each input name to {dims, data} (int64 ids).
// Prints {"version", "ms", "outputs": {name: {dims, data}}} on one line (ms: the run's own time); any error is one line on stderr, exit 1.
'use strict';
const fs = require('fs');

function fail(message) {
  process.stderr.write(String(message).replace(/\s+/g, ' ').trim() + '\n');
  process.exit(1);
}

async function main() {
  const [modelPath, feedPath] = process.argv.slice(2);
  if (!modelPath || !feedPath) fail('usage: node run.js MODEL.onnx FEED.json');
  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (e) {
    fail(`cannot load onnxruntime-node: ${e.message}`);
  }
  const feed = JSON.parse(fs.readFileSync(feedPath, 'utf8'));
  // A path, not a buffer: external weights (model.onnx.data) are found beside the graph.
  const session = await ort.InferenceSession.create(modelPath, {executionProviders: ['cpu'], logSeverityLevel: 3});
  const inputs = {};
  for (const name of session.inputNames) {
    if (!feed[name]) fail(`the feed has no input ${name}`);
    const {dims, data} = feed[name];
    inputs[name] = new ort.Tensor('int64', BigInt64Array.from(data, (v) => BigInt(v)), dims);
  }
  const started = performance.now();
  const results = await session.run(inputs);
  const ms = performance.now() - started;
  const outputs = {};
  for (const name of session.outputNames) {
    outputs[name] = {dims: Array.from(results[name].dims), data: Array.from(results[name].data, Number)};
  }
  process.stdout.write(JSON.stringify({version: ort.env.versions.node, ms, outputs}) + '\n');
}

main().catch((e) => fail(e && e.message ? e.message : e));
