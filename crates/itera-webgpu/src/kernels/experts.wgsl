// The MoE feed-forward with the experts batched: three dispatches per layer whatever the number of
// experts, and only the top-k experts of each token computed.
//   route:   h = rmsnorm(x) · norm weight; router logits h · Rᵀ; softmax; top-k -> sel, gates
//   gate_up: m[t·k + s] = silu(h[t] · Wg[sel]ᵀ) · (h[t] · Wu[sel]ᵀ)      (rows·k, H)
//   down:    x[t] += Σ_s gates[t·k + s] · (m[t·k + s] · Wd[sel]ᵀ)      (the residual, in place)
// The experts' matrices are concatenated by expert at upload: gate and up (E·H, D), down (E·D, H).
struct P {
    rows: u32, // tokens
    d: u32,    // model width
    e: u32,    // experts
    k: u32,    // experts per token
    h: u32,    // expert width
    eps: f32,  // route: the norm's epsilon
    pad0: u32, pad1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;  // route: residual (rows, d); gate_up: h (rows, d); down: m (rows·k, h)
@group(0) @binding(2) var<storage, read> wa: array<f32>; // route: norm weight (d); gate_up: gate (E·H, D); down: down (E·D, H)
@group(0) @binding(3) var<storage, read> wb: array<f32>; // route: router (E, D); gate_up: up (E·H, D)
@group(0) @binding(4) var<storage, read_write> sel: array<u32>;   // (rows·k): each token's experts, best first
@group(0) @binding(5) var<storage, read_write> gates: array<f32>; // (rows·k): their weights, summing to 1
@group(0) @binding(6) var<storage, read_write> y: array<f32>; // route: h; gate_up: m; down: the residual (+=)

const MAX_E: u32 = 64u;
var<workgroup> red: array<f32, 64>;
var<workgroup> red2: array<f32, 64>;

fn reduce2(i: u32) {
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (i < s) {
            red[i] += red[i + s];
            red2[i] += red2[i + s];
        }
        workgroupBarrier();
    }
}

// One workgroup per token. The norm as norm.wgsl's rmsnorm (same sums, same h); the router's
// logits with the 64 invocations split as (64 / e) slices of D × e experts; then Mixtral's
// routing as moe.wgsl's route (softmax, the k largest, renormalised over them).
@compute @workgroup_size(64)
fn route(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x + wid.y * 65535u;
    if (row >= p.rows) { return; } // uniform per workgroup
    let xo = row * p.d;
    var ss = 0.0;
    for (var i = lid.x; i < p.d; i += 64u) {
        let v = x[xo + i];
        ss += v * v;
    }
    red[lid.x] = ss;
    red2[lid.x] = 0.0;
    workgroupBarrier();
    reduce2(lid.x);
    let scale = 1.0 / sqrt(red[0] / f32(p.d) + p.eps);
    for (var i = lid.x; i < p.d; i += 64u) {
        y[xo + i] = x[xo + i] * scale * wa[i];
    }
    let slices = 64u / p.e;
    let j = lid.x % p.e;
    let sl = lid.x / p.e;
    var acc = 0.0;
    if (sl < slices) {
        let len = (p.d + slices - 1u) / slices;
        let end = min(p.d, (sl + 1u) * len);
        for (var i = sl * len; i < end; i++) {
            acc += (x[xo + i] * scale * wa[i]) * wb[j * p.d + i];
        }
    }
    workgroupBarrier(); // every read of red[0] is done
    red[lid.x] = acc;
    workgroupBarrier();
    if (lid.x == 0u) {
        var pr: array<f32, MAX_E>;
        var taken: array<bool, MAX_E>;
        var pick: array<u32, MAX_E>;
        var m = -3.0e38;
        for (var e = 0u; e < p.e; e++) {
            var logit = 0.0;
            for (var q = 0u; q < slices; q++) { logit += red[q * p.e + e]; }
            pr[e] = logit;
            m = max(m, logit);
        }
        var sum = 0.0;
        for (var e = 0u; e < p.e; e++) {
            pr[e] = exp(pr[e] - m);
            sum += pr[e];
            taken[e] = false;
        }
        var chosen = 0.0;
        for (var slot = 0u; slot < p.k; slot++) {
            var best = 0u;
            var bv = -1.0;
            for (var e = 0u; e < p.e; e++) {
                if (!taken[e] && pr[e] > bv) { bv = pr[e]; best = e; }
            }
            taken[best] = true;
            pick[slot] = best;
            chosen += pr[best] / sum;
        }
        for (var slot = 0u; slot < p.k; slot++) {
            sel[row * p.k + slot] = pick[slot];
            gates[row * p.k + slot] = (pr[pick[slot]] / sum) / chosen;
        }
    }
}

// One workgroup per (token, slot, column of H): both dot products over D (strided by 64, then a
// tree, as linear.wgsl's gemv), then SwiGLU's product.
@compute @workgroup_size(64)
fn gate_up(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x + wid.y * 65535u;
    if (id >= p.rows * p.k * p.h) { return; } // uniform per workgroup
    let c = id % p.h;
    let rs = id / p.h; // token · k + slot
    let xo = (rs / p.k) * p.d;
    let wo = (sel[rs] * p.h + c) * p.d;
    var ag = 0.0;
    var au = 0.0;
    for (var i = lid.x; i < p.d; i += 64u) {
        let v = x[xo + i];
        ag += v * wa[wo + i];
        au += v * wb[wo + i];
    }
    red[lid.x] = ag;
    red2[lid.x] = au;
    workgroupBarrier();
    reduce2(lid.x);
    if (lid.x == 0u) {
        let g = red[0];
        y[rs * p.h + c] = g / (1.0 + exp(-g)) * red2[0];
    }
}

// One workgroup per (token, column of D): each slot's dot product over H, weighted by its gate,
// summed over the slots and added to the residual.
@compute @workgroup_size(64)
fn down(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x + wid.y * 65535u;
    if (id >= p.rows * p.d) { return; } // uniform per workgroup
    let c = id % p.d;
    let t = id / p.d;
    var acc = 0.0;
    for (var s = 0u; s < p.k; s++) {
        let rs = t * p.k + s;
        let mo = rs * p.h;
        let wo = (sel[rs] * p.d + c) * p.h;
        var part = 0.0;
        for (var i = lid.x; i < p.h; i += 64u) {
            part += x[mo + i] * wa[wo + i];
        }
        acc += gates[rs] * part;
    }
    red[lid.x] = acc;
    red2[lid.x] = 0.0;
    workgroupBarrier();
    reduce2(lid.x);
    if (lid.x == 0u) {
        y[id] = y[id] + red[0];
    }
}
