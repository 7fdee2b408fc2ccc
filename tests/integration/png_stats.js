// Reads a PNG (8-bit RGB, RGBA or palette; no interlace) with Node's zlib
// alone and prints {"width", "height", "colors", "non_bg"}: the number of
// distinct colours and the fraction of pixels that differ from the most
// common one.  The integration tests use it to tell a rendered page or
// plot from a blank one.  Exit status 1 on a file it cannot read.
"use strict";
const fs = require("fs");
const zlib = require("zlib");

function fail(msg) {
  process.stderr.write("png_stats: " + msg + "\n");
  process.exit(1);
}

const path = process.argv[2];
if (!path) fail("usage: node png_stats.js FILE.png");
let buf;
try { buf = fs.readFileSync(path); } catch (e) { fail(String(e.message)); }
const sig = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
if (buf.length < 8 || !buf.subarray(0, 8).equals(sig)) fail(path + " is not a PNG");
let off = 8, w = 0, h = 0, depth = 0, ctype = 0, interlace = 0, plte = null;
const idat = [];
while (off + 8 <= buf.length) {
  const len = buf.readUInt32BE(off), type = buf.toString("latin1", off + 4, off + 8);
  const data = buf.subarray(off + 8, off + 8 + len);
  if (type === "IHDR") {
    w = data.readUInt32BE(0); h = data.readUInt32BE(4);
    depth = data[8]; ctype = data[9]; interlace = data[12];
  } else if (type === "PLTE") plte = data;
  else if (type === "IDAT") idat.push(data);
  else if (type === "IEND") break;
  off += 12 + len;
}
if (!w || !h) fail("no IHDR");
if (depth !== 8 || interlace !== 0 || ![2, 3, 6].includes(ctype))
  fail(`unsupported PNG: depth ${depth}, colour type ${ctype}, interlace ${interlace}`);
const bpp = ctype === 6 ? 4 : ctype === 2 ? 3 : 1;
let raw;
try { raw = zlib.inflateSync(Buffer.concat(idat)); } catch (e) { fail("bad image data"); }
const stride = w * bpp;
if (raw.length < h * (stride + 1)) fail("truncated image data");
const cur = Buffer.alloc(stride), prev = Buffer.alloc(stride);
const counts = new Map();
for (let y = 0; y < h; y++) {
  const f = raw[y * (stride + 1)], row = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
  for (let x = 0; x < stride; x++) {
    const a = x >= bpp ? cur[x - bpp] : 0, b = prev[x], c = x >= bpp ? prev[x - bpp] : 0;
    let v = row[x];
    if (f === 1) v += a;
    else if (f === 2) v += b;
    else if (f === 3) v += (a + b) >> 1;
    else if (f === 4) {
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }
    cur[x] = v & 255;
  }
  for (let x = 0; x < w; x++) {
    let key;
    if (ctype === 3) {
      const i = cur[x] * 3;
      key = plte ? (plte[i] << 16) | (plte[i + 1] << 8) | plte[i + 2] : cur[x];
    } else {
      key = (cur[x * bpp] << 16) | (cur[x * bpp + 1] << 8) | cur[x * bpp + 2];
    }
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  cur.copy(prev);
}
let top = 0;
for (const n of counts.values()) top = Math.max(top, n);
process.stdout.write(JSON.stringify({
  width: w, height: h, colors: counts.size, non_bg: 1 - top / (w * h),
}) + "\n");
