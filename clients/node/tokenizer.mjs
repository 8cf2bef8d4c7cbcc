// The maas tokenizer in JavaScript, so that Node feeds the ONNX model the token ids that
// Python would (src/maas/tokenizer.py is the reference; tests compare the two).
//
// The Unicode rule (tokenizer files of format maas-tokenizer/2) runs on code points with the
// two tables Python builds from its Unicode data, exported to unicode-tables.json by
// `python -m maas.unicode_text clients/node/unicode-tables.json`: read the first max_chars
// characters, fold each code point (compatibility decomposition and case folding), cut runs
// of word characters into words and runs of characters of scripts written without spaces
// into single characters each followed by the bigram it starts; look each token up (unknown
// tokens to 1), keep the first sequence_length and pad with 0 at the end. JavaScript's own
// normalize() and toLowerCase() would differ from Python's casefold and Unicode version.
// Files of format maas-tokenizer/1 (earlier artifacts) keep their ASCII rule.
import { readFileSync } from "node:fs";

export const FORMAT = "maas-tokenizer/2";
export const ASCII_FORMAT = "maas-tokenizer/1";
const UNK_ID = 1;

const TABLES = JSON.parse(
  readFileSync(new URL("./unicode-tables.json", import.meta.url), "utf8"),
);
const FOLD = new Map(Object.entries(TABLES.fold).map(([cp, folded]) => [Number(cp), folded]));
const { word: WORD, no_space: NO_SPACE } = TABLES.kinds;

function kindOf(codePoint) {
  // The last run that starts at or before codePoint (binary search).
  const starts = TABLES.run_starts;
  let low = 0;
  let high = starts.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (starts[middle] <= codePoint) low = middle;
    else high = middle - 1;
  }
  return TABLES.run_kinds[low];
}

export function fold(text) {
  let folded = "";
  for (const char of text) folded += FOLD.get(char.codePointAt(0)) ?? char;
  return folded;
}

// Tokens as they are looked up (folded form) of the first maxChars characters of text.
export function foldedTokens(text, maxChars = Infinity) {
  const chars = Array.from(fold(Array.from(text).slice(0, maxChars).join("")));
  const kinds = chars.map((char) => kindOf(char.codePointAt(0)));
  const tokens = [];
  let i = 0;
  while (i < chars.length) {
    const kind = kinds[i];
    if (kind !== WORD && kind !== NO_SPACE) {
      i += 1;
      continue;
    }
    let end = i;
    while (end < chars.length && kinds[end] === kind) end += 1;
    if (kind === WORD) tokens.push(chars.slice(i, end).join(""));
    else {
      for (let j = i; j < end; j += 1) {
        tokens.push(chars[j]);
        if (j + 1 < end) tokens.push(chars[j] + chars[j + 1]);
      }
    }
    i = end;
  }
  return tokens;
}

function asciiTokens(text) {
  // Only A-Z are lower-cased, as the ASCII rule's Python and TensorFlow twins do.
  const lower = text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
  return lower.split(/[^a-z0-9]+/).filter((token) => token.length > 0);
}

export class Tokenizer {
  constructor({ format, vocabulary, sequence_length: sequenceLength, labels, max_chars }) {
    this.ascii = format === ASCII_FORMAT;
    this.sequenceLength = sequenceLength;
    this.maxChars = max_chars ?? 16 * sequenceLength;
    this.labels = labels;
    // Looked up in folded form, as the text is cut: the vocabulary is stored composed.
    const keys = this.ascii ? vocabulary : vocabulary.map((token) => fold(token));
    this.index = new Map(keys.map((token, i) => [token, i]));
  }

  static load(path) {
    const raw = JSON.parse(readFileSync(path, "utf8"));
    if (raw.format !== FORMAT && raw.format !== ASCII_FORMAT) {
      throw new Error(`${path}: not a ${FORMAT} file`);
    }
    return new Tokenizer(raw);
  }

  tokens(text) {
    return this.ascii ? asciiTokens(text) : foldedTokens(text, this.maxChars);
  }

  // Token ids of every text, row-major in one Int32Array of texts.length * sequenceLength.
  encode(texts) {
    const ids = new Int32Array(texts.length * this.sequenceLength); // zeros: padding
    texts.forEach((text, row) => {
      this.tokens(text)
        .slice(0, this.sequenceLength)
        .forEach((token, column) => {
          ids[row * this.sequenceLength + column] = this.index.get(token) ?? UNK_ID;
        });
    });
    return ids;
  }
}
