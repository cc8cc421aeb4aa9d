// export-web's check, in Node: each candidate graph loaded by onnxruntime-web's WebAssembly build (the
// one the page ships) and run through classifier.mjs on real sentences, so the variant chosen is one
// that loads and answers there. Usage: node probe.mjs JOB.json, where JOB.json is {ort, tokenizers
// (paths of the modules), tokenizer, tokenizer_config (paths), manifest, variants: {name: model path},
// texts}. Prints {name: {load_ms, ms_per_row, logits (every text's)} or {error}} on one line.
import fs from "node:fs";
import {pathToFileURL} from "node:url";
import {Classifier} from "./classifier.mjs";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const ort = await import(pathToFileURL(job.ort).href);
const {Tokenizer} = await import(pathToFileURL(job.tokenizers).href);
ort.env.wasm.numThreads = 1;  // as in a page that is not cross-origin isolated
ort.env.logLevel = "fatal";
const read = (path) => (path ? JSON.parse(fs.readFileSync(path, "utf8")) : null);
const files = {tokenizer: read(job.tokenizer), tokenizerConfig: read(job.tokenizer_config), manifest: job.manifest};
const REPEATS = 3, TIMED_ROWS = 16;  // the speed: the best of REPEATS runs of the first rows
const report = {};
for (const [name, path] of Object.entries(job.variants)) {
  try {
    let started = performance.now();
    const classifier = await Classifier.create(ort, Tokenizer, {...files, model: fs.readFileSync(path)});
    const loadMs = performance.now() - started;
    const {logits} = await classifier.logits(job.texts);  // the answers, on every row (and a warm-up)
    const timed = job.texts.slice(0, TIMED_ROWS);
    let best = Infinity;
    for (let i = 0; i < REPEATS; i++) {  // the best of a few: other work on the machine only adds time
      started = performance.now();
      await classifier.logits(timed);
      best = Math.min(best, performance.now() - started);
    }
    report[name] = {load_ms: loadMs, ms_per_row: best / timed.length, logits};
    await classifier.session.release();  // its WebAssembly memory, before the next variant's
  } catch (e) {
    report[name] = {error: String(e && e.message ? e.message : e).replace(/\s+/g, " ").trim()};
  }
}
process.stdout.write(JSON.stringify(report) + "\n");
