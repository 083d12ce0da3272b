// The baseline's attention: RoPE (rotate-half, HF Llama), the KV cache, causal attention.
// `step.offset` is the position of the first new token (the tokens the cache already holds).
struct P {
    l: u32,          // new tokens
    heads: u32,      // query heads
    dh: u32,         // head dim
    kv_heads: u32,   // key/value heads
    max_splits: u32, // flash-decoding: the splits the grid and the partials are sized for
    positions: u32,  // rope: rows of the cos/sin tables
    scale: f32,      // attention: 1 / sqrt(dh)
    pad1: u32,
}
// Written by the host before every call (model.rs, `forward`): the plan is recorded once per
// token count, and these change from step to step.
struct Step {
    offset: u32,
    splits: u32,    // flash-decoding: splits in use this step (1..=max_splits; model.rs `split_layout`)
    split_len: u32, // flash-decoding: keys per split (the last split may hold fewer)
    pad0: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> src: array<f32>;  // rope_qkv: [q | k | v] (l, (heads + 2·kv_heads)·dh); attention: q (l, heads·dh)
@group(0) @binding(3) var<storage, read> aux: array<f32>;  // rope_qkv: [cos | sin] (positions, dh/2) each; attention: K cache
@group(0) @binding(4) var<storage, read> aux2: array<f32>; // attention: V cache
@group(0) @binding(5) var<storage, read_write> dst: array<f32>; // rope_qkv: q rotated (l, heads·dh); attention: output
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>; // rope_qkv: (max_context, kv_heads·dh)
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>; // rope_qkv: (max_context, kv_heads·dh)
// Flash-decoding's partials: (heads, max_splits, 2 + dh), per (head, split) [m, sum, acc (dh)].
@group(0) @binding(8) var<storage, read_write> part: array<f32>;

// The fused q|k|v projection's output to what attention reads, in one dispatch: RoPE of q into
// dst (row i), RoPE of k into the key cache and v copied into the value cache (row offset + i).
// RoPE: x·cos + rotate_half(x)·sin at position offset + i (reference: the CPU path's rope_slow).
// One invocation per (i, and one of: a rotated pair (head, j < dh/2) of q's heads then k's, which
// sit side by side in src, or one channel of v).
@compute @workgroup_size(64)
fn rope_qkv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * 65535u * 64u;
    let half = p.dh / 2u;
    let qw = p.heads * p.dh;
    let kvw = p.kv_heads * p.dh;
    let pairs = (p.heads + p.kv_heads) * half; // rotated pairs per token, q's then k's
    let per = pairs + kvw;
    if (id >= p.l * per) { return; }
    let i = id / per;
    let r = id % per;
    let row = i * (qw + 2u * kvw); // row i of src
    let pos = step.offset + i;
    if (r < pairs) {
        let h = r / half; // q heads 0..heads, then k heads
        let j = r % half;
        let base = row + h * p.dh;
        let x1 = src[base + j];
        let x2 = src[base + j + half];
        let c = aux[pos * half + j];
        let s = aux[(p.positions + pos) * half + j];
        let y1 = x1 * c - x2 * s;
        let y2 = x2 * c + x1 * s;
        if (h < p.heads) {
            let o = i * qw + h * p.dh;
            dst[o + j] = y1;
            dst[o + j + half] = y2;
        } else {
            let o = pos * kvw + (h - p.heads) * p.dh;
            k_cache[o + j] = y1;
            k_cache[o + j + half] = y2;
        }
    } else {
        let c = r - pairs;
        v_cache[pos * kvw + c] = src[row + qw + kvw + c];
    }
}

// Causal attention with an online softmax: one workgroup of 64 per (query i, head h); query i at
// position offset + i sees keys 0..=offset+i, taken 64 at a time by `walk`. GQA: head h reads kv
// head h / (heads / kv_heads).
const MAX_DH: u32 = 256u;
const TILE: u32 = 64u;
var<workgroup> qs: array<f32, MAX_DH>;
var<workgroup> sc: array<f32, TILE>;

// An online softmax's running state over some keys: the largest score m, Σ exp(score - m), and
// Σ exp(score - m)·v for this invocation's channels t, t + 64, t + 128, t + 192.
struct Partial {
    m: f32,
    sum: f32,
    acc: array<f32, 4>,
}

// Keys lo..hi of kv head kvh against the query in `qs`, 64 at a time: each invocation scores one
// key of the tile (q·k over dh), then every invocation rescales its share of the output and adds
// the tile's weighted values (reads of V rows coalesced over channels). Called by the whole
// workgroup with the same lo and hi (it has barriers). No keys (lo >= hi): m = -3e38, sum = 0.
fn walk(t: u32, kvh: u32, lo: u32, hi: u32) -> Partial {
    let kv_w = p.kv_heads * p.dh;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var m = -3.0e38;
    var sum = 0.0;
    for (var j0 = lo; j0 < hi; j0 += TILE) {
        let j = j0 + t;
        var s = -3.0e38;
        if (j < hi) {
            let kb = j * kv_w + kvh * p.dh;
            var d = 0.0;
            for (var c = 0u; c < p.dh; c++) { d += qs[c] * aux[kb + c]; }
            s = d * p.scale;
        }
        sc[t] = s;
        workgroupBarrier();
        let count = min(TILE, hi - j0);
        var tm = m;
        for (var u = 0u; u < count; u++) { tm = max(tm, sc[u]); }
        let corr = exp(m - tm);
        sum = sum * corr;
        for (var r = 0u; r < 4u; r++) { acc[r] = acc[r] * corr; }
        for (var u = 0u; u < count; u++) {
            let e = exp(sc[u] - tm);
            sum += e;
            let vb = (j0 + u) * kv_w + kvh * p.dh;
            for (var r = 0u; r < 4u; r++) {
                let c = t + r * TILE;
                if (c < p.dh) { acc[r] += e * aux2[vb + c]; }
            }
        }
        m = tm;
        workgroupBarrier(); // every invocation has read sc before the next tile overwrites it
    }
    return Partial(m, sum, acc);
}

@compute @workgroup_size(64)
fn attend(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x + wid.y * 65535u;
    if (id >= p.l * p.heads) { return; } // uniform per workgroup
    let t = lid.x;
    let h = id % p.heads;
    let i = id / p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let qb = i * p.heads * p.dh + h * p.dh;
    for (var c = t; c < p.dh; c += TILE) { qs[c] = src[qb + c]; }
    workgroupBarrier();
    let r = walk(t, kvh, 0u, step.offset + i + 1u); // keys 0..=offset+i
    for (var k = 0u; k < 4u; k++) {
        let c = t + k * TILE;
        if (c < p.dh) { dst[qb + c] = r.acc[k] / r.sum; }
    }
}

// Flash-decoding (one query: the decode step, l = 1). `attend` gives a decode step one
// workgroup per head, so a few workgroups walk the whole cache while the GPU idles; here the keys
// 0..=offset are cut into `step.splits` runs of `step.split_len` and two dispatches share them out:
//
// 1. `attend_split`, one workgroup per (head, split): `walk` over the split's keys, its partial
//    (m_s, sum_s, acc_s) into `part`.
// 2. `attend_combine`, one workgroup per head: with m = max_s m_s,
//    out = Σ_s exp(m_s - m)·acc_s / Σ_s exp(m_s - m)·sum_s.
//
// The plan is recorded once, so its grid has `p.max_splits` workgroups per head, sized for the
// model's longest context; the splits past this step's `step.splits` return at once. One split
// (contexts up to one split's keys) gives `attend`'s numbers exactly: exp(0) = 1.
@compute @workgroup_size(64)
fn attend_split(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x + wid.y * 65535u;
    let h = id % p.heads;
    let sp = id / p.heads;
    if (sp >= min(step.splits, p.max_splits)) { return; } // uniform per workgroup
    let t = lid.x;
    let kvh = h / (p.heads / p.kv_heads);
    for (var c = t; c < p.dh; c += TILE) { qs[c] = src[h * p.dh + c]; }
    workgroupBarrier();
    let n = step.offset + 1u; // keys 0..n
    let lo = min(sp * step.split_len, n);
    let r = walk(t, kvh, lo, min(lo + step.split_len, n));
    let base = (h * p.max_splits + sp) * (p.dh + 2u);
    if (t == 0u) {
        part[base] = r.m;
        part[base + 1u] = r.sum;
    }
    for (var k = 0u; k < 4u; k++) {
        let c = t + k * TILE;
        if (c < p.dh) { part[base + 2u + c] = r.acc[k]; }
    }
}

@compute @workgroup_size(64)
fn attend_combine(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x + wid.y * 65535u;
    if (h >= p.heads) { return; }
    let t = lid.x;
    let splits = min(step.splits, p.max_splits);
    let rec = p.dh + 2u;
    let hb = h * p.max_splits * rec;
    var m = -3.0e38;
    for (var s = 0u; s < splits; s++) { m = max(m, part[hb + s * rec]); }
    var sum = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var s = 0u; s < splits; s++) {
        let b = hb + s * rec;
        let w = exp(part[b] - m); // an empty split (m_s = -3e38, sum_s = 0) weighs 0
        sum += w * part[b + 1u];
        for (var k = 0u; k < 4u; k++) {
            let c = t + k * TILE;
            if (c < p.dh) { acc[k] += w * part[b + 2u + c]; }
        }
    }
    for (var k = 0u; k < 4u; k++) {
        let c = t + k * TILE;
        if (c < p.dh) { dst[h * p.dh + c] = acc[k] / sum; }
    }
}
