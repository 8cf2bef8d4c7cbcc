// The maas tokenizer in JavaScript, so that Node feeds the ONNX model the token ids that
// Python would (src/maas/tokenizer.py is the reference; tests compare the two).
//
// The rule: lower-case ASCII letters only, treat every run of characters outside [a-z0-9]
// as a separator, keep the first sequence_length tokens, map each to its vocabulary index
// (unknown tokens to 1) and pad with 0 at the end.
import { readFileSync } from "node:fs";

export const FORMAT = "maas-tokenizer/1";
const UNK_ID = 1;

export function splitTokens(text) {
  // Only A-Z are lower-cased, as Python's str.translate table and tf.strings.lower do.
  const lower = text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
  return lower.split(/[^a-z0-9]+/).filter((token) => token.length > 0);
}

export class Tokenizer {
  constructor({ vocabulary, sequence_length: sequenceLength, labels }) {
    this.sequenceLength = sequenceLength;
    this.labels = labels;
    this.index = new Map(vocabulary.map((token, i) => [token, i]));
  }

  static load(path) {
    const raw = JSON.parse(readFileSync(path, "utf8"));
    if (raw.format !== FORMAT) throw new Error(`${path}: not a ${FORMAT} file`);
    return new Tokenizer(raw);
  }

  // Token ids of every text, row-major in one Int32Array of texts.length * sequenceLength.
  encode(texts) {
    const ids = new Int32Array(texts.length * this.sequenceLength); // zeros: padding
    texts.forEach((text, row) => {
      splitTokens(text)
        .slice(0, this.sequenceLength)
        .forEach((token, column) => {
          ids[row * this.sequenceLength + column] = this.index.get(token) ?? UNK_ID;
        });
    });
    return ids;
  }
}
