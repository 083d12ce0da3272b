// y = x · Wᵀ (a bias-free linear layer), or y += x · Wᵀ with `acc`.
// x (M, K) read from row stride x_stride at column x_off; W (N, K) row-major, from element w_off;
// y (M, N) written at row stride y_stride from column y_off.
// Tiles of 16 × 16 outputs per workgroup, K walked in steps of 16 through workgroup memory.
//
// MODE, a pipeline-overridable constant (one pipeline per value, ops.rs `Input`), folds the op
// before the projection into it, saving that op's dispatch:
//   0: plain, as above.
//   1: RMSNorm (reference: itera_model::ops::rms_norm) of x's rows first.
//      The norm weight w is already multiplied into W's columns at upload (W'[n, k] = W[n, k]·w[k],
//      model.rs `stacked`), so what is left is each row's scale: the kernel sums x² over K while
//      it walks the tiles (the tiles it loads anyway) and multiplies the row's outputs by
//      1 / sqrt(Σx² / K + eps) at the end: y = rmsnorm(x)·Wᵀ = (x·W'ᵀ) / sqrt(mean(x²) + eps).
//   2: SwiGLU: the input is silu(g)·u, g and u the two halves of one (M, 2K) row (the fused
//      gate|up projection's output: g at column kk, u at K + kk), silu(g) = g / (1 + exp(-g)).
override MODE: u32 = 0u;

struct P {
    m: u32, n: u32, k: u32, x_stride: u32,
    x_off: u32, y_stride: u32, y_off: u32, acc: u32,
    w_off: u32, eps: f32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Input element at index `o` of x (o: row start + column < K).
fn load_x(o: u32) -> f32 {
    if (MODE == 2u) {
        let g = x[o];
        return g / (1.0 + exp(-g)) * x[o + p.k];
    }
    return x[o];
}

// The norm's row scale from the row's Σx² (MODE 1).
fn row_scale(ss: f32) -> f32 {
    return 1.0 / sqrt(ss / f32(p.k) + p.eps);
}

const T: u32 = 16u;
var<workgroup> xs: array<array<f32, 16>, 16>; // [row][k]
var<workgroup> ws: array<array<f32, 16>, 16>; // [col][k]

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * T + lid.y;
    let col = wid.x * T + lid.x;
    let wrow = wid.x * T + lid.y;
    var acc = 0.0;
    var ss = 0.0; // MODE 1: Σx² of this row (every invocation of the row sums the same terms)
    for (var t = 0u; t < p.k; t += T) {
        let kk = t + lid.x;
        var xv = 0.0;
        if (row < p.m && kk < p.k) { xv = load_x(p.x_off + row * p.x_stride + kk); }
        xs[lid.y][lid.x] = xv;
        var wv = 0.0;
        if (wrow < p.n && kk < p.k) { wv = w[p.w_off + wrow * p.k + kk]; }
        ws[lid.y][lid.x] = wv;
        workgroupBarrier();
        for (var i = 0u; i < T; i++) {
            let v = xs[lid.y][i];
            acc += v * ws[lid.x][i];
            if (MODE == 1u) { ss += v * v; }
        }
        workgroupBarrier();
    }
    if (MODE == 1u) { acc = acc * row_scale(ss); }
    if (row < p.m && col < p.n) {
        let o = p.y_off + row * p.y_stride + col;
        if (p.acc != 0u) { y[o] = y[o] + acc; } else { y[o] = acc; }
    }
}

// Matrix-vector (M = 1, decode): one workgroup of 64 per output, summing over K in parallel.
var<workgroup> part: array<f32, 64>;
var<workgroup> part_ss: array<f32, 64>; // MODE 1: Σx²

@compute @workgroup_size(64)
fn gemv(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x + wid.y * 65535u;
    if (col >= p.n) { return; } // uniform per workgroup: every invocation of it returns together
    var acc = 0.0;
    var ss = 0.0;
    for (var kk = lid.x; kk < p.k; kk += 64u) {
        let v = load_x(p.x_off + kk);
        acc += v * w[p.w_off + col * p.k + kk];
        if (MODE == 1u) { ss += v * v; }
    }
    part[lid.x] = acc;
    part_ss[lid.x] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            part[lid.x] += part[lid.x + s];
            part_ss[lid.x] += part_ss[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        var out = part[0];
        if (MODE == 1u) { out = out * row_scale(part_ss[0]); }
        let o = p.y_off + col;
        if (p.acc != 0u) { y[o] = y[o] + out; } else { y[o] = out; }
    }
}
