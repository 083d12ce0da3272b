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

// Causal attention with an online softmax: one workgroup of 64 per (query i, head h); query i at
// position offset + i sees keys 0..=offset+i, taken 64 at a time: each invocation scores one key
// of the tile (q·k over dh), then every invocation rescales its share of the output (channels
// t, t+64, ...) and adds the tile's weighted values (reads of V rows coalesced over channels).
// GQA: head h reads kv head h / (heads / kv_heads).
const MAX_DH: u32 = 256u;
const TILE: u32 = 64u;
var<workgroup> qs: array<f32, MAX_DH>;
var<workgroup> sc: array<f32, TILE>;

@compute @workgroup_size(64)
fn attend(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x + wid.y * 65535u;
    if (id >= p.l * p.heads) { return; } // uniform per workgroup
    let t = lid.x;
    let h = id % p.heads;
    let i = id / p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_w = p.kv_heads * p.dh;
    let qb = i * p.heads * p.dh + h * p.dh;
    for (var c = t; c < p.dh; c += TILE) { qs[c] = src[qb + c]; }
    workgroupBarrier();
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0); // channels t, t + 64, t + 128, t + 192
    var m = -3.0e38;
    var sum = 0.0;
    let n = step.offset + i + 1u; // keys 0..n
    for (var j0 = 0u; j0 < n; j0 += TILE) {
        let j = j0 + t;
        var s = -3.0e38;
        if (j < n) {
            let kb = j * kv_w + kvh * p.dh;
            var d = 0.0;
            for (var c = 0u; c < p.dh; c++) { d += qs[c] * aux[kb + c]; }
            s = d * p.scale;
        }
        sc[t] = s;
        workgroupBarrier();
        let count = min(TILE, n - j0);
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
    for (var r = 0u; r < 4u; r++) {
        let c = t + r * TILE;
        if (c < p.dh) { dst[qb + c] = acc[r] / sum; }
    }
}
