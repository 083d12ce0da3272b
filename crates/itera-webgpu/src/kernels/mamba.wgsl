// Itera-Lite's mixer: causal depthwise conv + SiLU with its window, and the gated selective scan
// with its state (batch 1; the state stays on the GPU between calls).
struct P {
    l: u32,   // new tokens
    ed: u32,  // inner channels
    n: u32,   // state size
    k: u32,   // conv taps
    r: u32,   // Δ rank (columns of x_dbl before B and C)
    pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> xz: array<f32>;   // (l, 2ed): x | z
@group(0) @binding(2) var<storage, read> a: array<f32>;    // conv: weight (ed, k) ; scan: xc (l, ed)
@group(0) @binding(3) var<storage, read> b: array<f32>;    // conv: bias (ed) / window (k-1, ed) ; scan: dt (l, ed)
@group(0) @binding(4) var<storage, read> c: array<f32>;    // conv: window (k-1, ed) ; scan: x_dbl (l, r + 2n)
@group(0) @binding(5) var<storage, read> prm: array<f32>;  // scan: [A | D | dt_bias] (ed, n + 2)
@group(0) @binding(6) var<storage, read_write> st: array<f32>; // scan: h (ed, n)
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }
fn softplus(v: f32) -> f32 { return max(v, 0.0) + log(1.0 + exp(-abs(v))); }

// xp = [window (k-1 rows) ; x (l rows)];  y[t, ch] = silu(bias + Σ_tap w[ch, tap] · xp[t + tap, ch]).
// a = weight, b = bias, c = window.
@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * 65535u * 64u;
    if (id >= p.l * p.ed) { return; }
    let t = id / p.ed;
    let ch = id % p.ed;
    var acc = b[ch];
    for (var tap = 0u; tap < p.k; tap++) {
        let row = t + tap; // in xp
        var v = 0.0;
        if (row < p.k - 1u) { v = c[row * p.ed + ch]; } else { v = xz[(row - (p.k - 1u)) * 2u * p.ed + ch]; }
        acc += a[ch * p.k + tap] * v;
    }
    y[id] = silu(acc);
}

// The selective scan, with the conv window's update. Δ = softplus(dt + bias); h = exp(Δ·A)·h + Δ·u·B;
// y = (C·h + D·u) · silu(z).  a = xc (u), b = dt, c = x_dbl (B at column r, C at r + n).
// One invocation per (channel, state), 64 / n channels per workgroup: each holds its h in a
// register, so a time step is one multiply-add on the recurrence (the old kernel walked every state
// of a channel in one invocation, h in private memory). The C·h terms of T steps go to workgroup
// memory; after each T steps the workgroup sums them per (step, channel) in state order (the
// same sums as the sequential walk) and writes y.
const MAX_N: u32 = 64u;
const T: u32 = 16u;
var<workgroup> prod: array<f32, 1024>; // (T, 64 / n channels, n) at most T · 64
@group(0) @binding(8) var<storage, read_write> win: array<f32>; // the conv window (k-1, ed), updated in place

@compute @workgroup_size(64)
fn scan(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let cpw = 64u / p.n; // channels per workgroup
    let ch0 = (wid.x + wid.y * 65535u) * cpw;
    let cl = lid.x / p.n;
    let s = lid.x % p.n;
    let ch = ch0 + cl;
    let live = cl < cpw && ch < p.ed;
    let np2 = p.n + 2u;
    let cols = p.r + 2u * p.n;
    var h = 0.0;
    var a_s = 0.0;
    var bias = 0.0;
    if (live) {
        h = st[ch * p.n + s];
        a_s = prm[ch * np2 + s];
        bias = prm[ch * np2 + p.n + 1u];
    }
    for (var t0 = 0u; t0 < p.l; t0 += T) {
        let steps = min(T, p.l - t0);
        if (live) {
            for (var i = 0u; i < steps; i++) {
                let t = t0 + i;
                let u = a[t * p.ed + ch];
                let delta = softplus(b[t * p.ed + ch] + bias);
                let du = delta * u;
                h = exp(delta * a_s) * h + du * c[t * cols + p.r + s];
                prod[(i * cpw + cl) * p.n + s] = h * c[t * cols + p.r + p.n + s];
            }
        }
        workgroupBarrier();
        for (var q = lid.x; q < steps * cpw; q += 64u) {
            let i = q / cpw;
            let c2 = q % cpw;
            let ch2 = ch0 + c2;
            if (ch2 < p.ed) {
                let t = t0 + i;
                var acc = 0.0;
                for (var s2 = 0u; s2 < p.n; s2++) { acc += prod[(i * cpw + c2) * p.n + s2]; }
                let u = a[t * p.ed + ch2];
                let z = xz[t * 2u * p.ed + p.ed + ch2];
                y[t * p.ed + ch2] = (acc + prm[ch2 * np2 + p.n] * u) * silu(z);
            }
        }
        workgroupBarrier();
    }
    if (live) {
        st[ch * p.n + s] = h;
        // The next window, the last k-1 rows of [window; x], in place: row r takes row l + r of
        // that stack, always further down than r, so walking r upwards reads before it writes.
        if (s == 0u) {
            for (var r = 0u; r + 1u < p.k; r++) {
                let row = p.l + r;
                var v = 0.0;
                if (row < p.k - 1u) { v = win[row * p.ed + ch]; } else { v = xz[(row - (p.k - 1u)) * 2u * p.ed + ch]; }
                win[r * p.ed + ch] = v;
            }
        }
    }
}
