// The baseline's attention: RoPE (rotate-half, HF Llama), the KV cache, causal attention.
// `step.offset` is the position of the first new token (the tokens the cache already holds).
struct P {
    l: u32,        // new tokens
    heads: u32,    // heads of this tensor (rope, copy) / query heads (attention)
    dh: u32,       // head dim
    kv_heads: u32, // attention: key/value heads
    cache_row0: u32, // rope, copy: 1 = write at row step.offset + i of dst (the cache), 0 = at row i
    positions: u32,  // rope: rows of the cos/sin tables
    scale: f32,      // attention: 1 / sqrt(dh)
    pad0: u32,
}
struct Step {
    offset: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> src: array<f32>;  // rope/copy: (l, heads·dh); attention: q (l, heads·dh)
@group(0) @binding(3) var<storage, read> aux: array<f32>;  // rope: [cos | sin] (positions, dh/2) each; attention: K cache
@group(0) @binding(4) var<storage, read> aux2: array<f32>; // attention: V cache; otherwise unused
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;

fn dst_row(i: u32) -> u32 {
    if (p.cache_row0 != 0u) { return step.offset + i; }
    return i;
}

// x·cos + rotate_half(x)·sin at position step.offset + i: one invocation per (i, head, j < dh/2).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.dh / 2u;
    let id = gid.x;
    if (id >= p.l * p.heads * half) { return; }
    let j = id % half;
    let h = (id / half) % p.heads;
    let i = id / (half * p.heads);
    let pos = step.offset + i;
    let base = i * p.heads * p.dh + h * p.dh;
    let x1 = src[base + j];
    let x2 = src[base + j + half];
    let c = aux[pos * half + j];
    let s = aux[(p.positions + pos) * half + j];
    let o = dst_row(i) * p.heads * p.dh + h * p.dh;
    dst[o + j] = x1 * c - x2 * s;
    dst[o + j + half] = x2 * c + x1 * s;
}

// dst row (offset + i) = src row i: the values into the cache.
@compute @workgroup_size(64)
fn copy_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = p.heads * p.dh;
    let id = gid.x;
    if (id >= p.l * w) { return; }
    let i = id / w;
    let c = id % w;
    dst[dst_row(i) * w + c] = src[id];
}

// Causal attention with an online softmax: one invocation per (query i, head h); query i at
// position offset + i sees keys 0..=offset+i. GQA: head h reads kv head h / (heads / kv_heads).
const MAX_DH: u32 = 256u;
@compute @workgroup_size(64)
fn attend(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x;
    if (id >= p.l * p.heads) { return; }
    let h = id % p.heads;
    let i = id / p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_w = p.kv_heads * p.dh;
    let qb = i * p.heads * p.dh + h * p.dh;
    var acc: array<f32, MAX_DH>;
    for (var c = 0u; c < p.dh; c++) { acc[c] = 0.0; }
    var m = -3.0e38;
    var sum = 0.0;
    let last = step.offset + i;
    for (var j = 0u; j <= last; j++) {
        let kb = j * kv_w + kvh * p.dh;
        var s = 0.0;
        for (var c = 0u; c < p.dh; c++) { s += src[qb + c] * aux[kb + c]; }
        s = s * p.scale;
        let m2 = max(m, s);
        let corr = exp(m - m2);
        let e = exp(s - m2);
        sum = sum * corr + e;
        for (var c = 0u; c < p.dh; c++) { acc[c] = acc[c] * corr + e * aux2[kb + c]; }
        m = m2;
    }
    for (var c = 0u; c < p.dh; c++) { dst[qb + c] = acc[c] / sum; }
}
