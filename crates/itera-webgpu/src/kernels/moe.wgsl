// The MoE router's top-k and the weighted sum of expert outputs (the per-expert path; its SwiGLU
// product is read by the down projection, linear.wgsl MODE 2).
struct P {
    rows: u32,  // tokens
    width: u32, // axpy: model width
    e: u32,     // experts
    k: u32,     // route: experts per token; axpy: the expert's index
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// a = router logits (rows, e) -> y = gates (rows, e): the softmax's top-k probabilities
// renormalised to sum 1, zero elsewhere (Mixtral's routing). One invocation per token.
const MAX_E: u32 = 64u;
@compute @workgroup_size(64)
fn route(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.rows) { return; }
    var pr: array<f32, MAX_E>;
    var taken: array<bool, MAX_E>;
    var m = -3.0e38;
    for (var j = 0u; j < p.e; j++) { m = max(m, a[t * p.e + j]); }
    var sum = 0.0;
    for (var j = 0u; j < p.e; j++) {
        pr[j] = exp(a[t * p.e + j] - m);
        sum += pr[j];
        taken[j] = false;
    }
    var chosen = 0.0;
    for (var slot = 0u; slot < p.k; slot++) {
        var best = 0u;
        var bv = -1.0;
        for (var j = 0u; j < p.e; j++) {
            if (!taken[j] && pr[j] > bv) { bv = pr[j]; best = j; }
        }
        taken[best] = true;
        chosen += pr[best] / sum;
    }
    for (var j = 0u; j < p.e; j++) {
        var g = 0.0;
        if (taken[j]) { g = (pr[j] / sum) / chosen; }
        y[t * p.e + j] = g;
    }
}

// y (rows, width) += gates[:, k] · a  (a: expert k's output, b: gates (rows, e)).
@compute @workgroup_size(64)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= p.rows * p.width) { return; }
    let t = i / p.width;
    y[i] = y[i] + b[t * p.e + p.k] * a[i];
}
