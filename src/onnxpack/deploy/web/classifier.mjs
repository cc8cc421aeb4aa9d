// A package's classifier in JavaScript: its tokenizer.json read by tokenizers.js, its graph run by
// onnxruntime-web, giving the objects `onnxpack predict` prints plus the logits. The exported page
// (app.mjs) and export-web's own check in Node (probe.mjs) both run this file, so what was checked is
// what ships. It builds the feed as onnxpack's Python side does (runtime/feed.py): truncation to
// max_length, the longer text of a pair first, special tokens from the tokenizer's post-processor,
// texts sorted by length and each batch padded to its own longest row.

const BATCH = 16;

export class Classifier {
  // ort: the onnxruntime-web module; Tokenizer: tokenizers.js's class; files: {model (bytes),
  // tokenizer, tokenizerConfig (parsed JSON), manifest (export-web's manifest.json)}.
  static async create(ort, Tokenizer, {model, tokenizer, tokenizerConfig, manifest}) {
    const session = await ort.InferenceSession.create(model, {executionProviders: ["wasm"],
                                                              graphOptimizationLevel: "all"});
    return new Classifier(ort, new Tokenizer(tokenizer, tokenizerConfig || {}), session, manifest);
  }

  constructor(ort, tokenizer, session, manifest) {
    this.ort = ort;
    this.tokenizer = tokenizer;
    this.session = session;
    this.manifest = manifest;
    this.inputs = manifest.inputs;
    this.special = {single: this.#withSpecials([], null).ids.length, pair: this.#withSpecials([], []).ids.length};
  }

  // The tokens of a text without special tokens (tokenizers.js's own pipeline: normalizer,
  // pre-tokenizer, model, added tokens).
  #pieces(text) {
    return this.tokenizer.encode_text(text);
  }

  #withSpecials(first, second) {
    const processor = this.tokenizer.post_processor;
    const done = processor ? processor(first, second, true) : {tokens: [...first, ...(second || [])]};
    const tokens = done.tokens;
    const typeIds = done.token_type_ids || new Array(tokens.length).fill(0);
    const t = this.tokenizer;
    const ids = tokens.map((x) => t.added_tokens_map.get(x)?.id ?? t.model.tokens_to_ids.get(x) ?? t.model.unk_token_id);
    return {ids, typeIds};
  }

  // One text or [first, second] as {ids, typeIds, truncated}: cut to max_length as tokenizers'
  // longest_first truncation does (tokenizers/src/utils/truncation.rs), then the special tokens added.
  encode(text) {
    const pair = Array.isArray(text);
    let first = this.#pieces(pair ? text[0] : text), second = pair ? this.#pieces(text[1]) : null;
    const room = this.manifest.max_length - (pair ? this.special.pair : this.special.single);
    const total = first.length + (pair ? second.length : 0);
    const truncated = total > room;
    if (truncated && !pair) {
      first = first.slice(0, Math.max(room, 0));
    } else if (truncated) {
      let [n1, n2] = [first.length, second.length];
      const swap = n1 > n2;
      if (swap) [n1, n2] = [n2, n1];
      n2 = n1 > room ? n1 : Math.max(n1, room - n1);
      if (n1 + n2 > room) {
        n1 = Math.floor(room / 2);
        n2 = n1 + (room % 2);
      }
      if (swap) [n1, n2] = [n2, n1];
      first = first.slice(0, n1);
      second = second.slice(0, n2);
    }
    return {...this.#withSpecials(first, second), truncated};
  }

  // Logits per text (arrays of numbers) and which texts were cut to max_length.
  async logits(texts) {
    const rows = texts.map((t) => this.encode(t));
    const order = rows.map((_, i) => i).sort((a, b) => rows[b].ids.length - rows[a].ids.length || a - b);
    const out = new Array(texts.length);
    const pad = BigInt(this.manifest.pad_token_id);
    for (let start = 0; start < order.length; start += BATCH) {
      const batch = order.slice(start, start + BATCH);
      const width = rows[batch[0]].ids.length;
      const columns = {input_ids: new BigInt64Array(batch.length * width).fill(pad),
                       attention_mask: new BigInt64Array(batch.length * width),
                       token_type_ids: new BigInt64Array(batch.length * width)};
      batch.forEach((i, r) => rows[i].ids.forEach((id, j) => {
        columns.input_ids[r * width + j] = BigInt(id);
        columns.attention_mask[r * width + j] = 1n;
        columns.token_type_ids[r * width + j] = BigInt(rows[i].typeIds[j]);
      }));
      const feed = {};
      for (const input of this.inputs) feed[input] = new this.ort.Tensor("int64", columns[input], [batch.length, width]);
      const result = await this.session.run(feed);
      const logits = result[this.manifest.output].data, labels = logits.length / batch.length;
      batch.forEach((i, r) => { out[i] = Array.from(logits.subarray(r * labels, (r + 1) * labels)); });
    }
    return {logits: out, truncated: rows.map((r) => r.truncated)};
  }

  // `onnxpack predict`'s objects for these texts ({text, label, score, scores}, and labels for a
  // multi-label model), each with its logits.
  async predict(texts) {
    const {logits} = await this.logits(texts);
    return this.results(texts, logits);
  }

  results(texts, logits) {
    const {labels, multi_label: multiLabel, thresholds} = this.manifest;
    return logits.map((row, i) => {
      const p = multiLabel ? row.map((x) => 1 / (1 + Math.exp(-x))) : softmax(row);
      const best = p.indexOf(Math.max(...p));
      const result = {text: texts[i], label: labels[best], score: p[best],
                      scores: Object.fromEntries(labels.map((name, k) => [name, p[k]])), logits: row};
      if (multiLabel) result.labels = labels.filter((_, k) => p[k] >= thresholds[k]);
      return result;
    });
  }
}

function softmax(row) {
  const top = Math.max(...row);
  const e = row.map((x) => Math.exp(x - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / sum);
}
