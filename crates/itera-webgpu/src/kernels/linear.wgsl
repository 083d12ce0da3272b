// y = x · Wᵀ (a bias-free linear layer), or y += x · Wᵀ with `acc`.
// x (M, K) read from row stride x_stride at column x_off; W (N, K) row-major, from element w_off;
// y (M, N) written at row stride y_stride from column y_off.
// Tiles of 16 × 16 outputs per workgroup, K walked in steps of 16 through workgroup memory.
struct P {
    m: u32, n: u32, k: u32, x_stride: u32,
    x_off: u32, y_stride: u32, y_off: u32, acc: u32,
    w_off: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const T: u32 = 16u;
var<workgroup> xs: array<array<f32, 16>, 16>; // [row][k]
var<workgroup> ws: array<array<f32, 16>, 16>; // [col][k]

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * T + lid.y;
    let col = wid.x * T + lid.x;
    let wrow = wid.x * T + lid.y;
    var acc = 0.0;
    for (var t = 0u; t < p.k; t += T) {
        let kk = t + lid.x;
        var xv = 0.0;
        if (row < p.m && kk < p.k) { xv = x[p.x_off + row * p.x_stride + kk]; }
        xs[lid.y][lid.x] = xv;
        var wv = 0.0;
        if (wrow < p.n && kk < p.k) { wv = w[p.w_off + wrow * p.k + kk]; }
        ws[lid.y][lid.x] = wv;
        workgroupBarrier();
        for (var i = 0u; i < T; i++) {
            acc += xs[lid.y][i] * ws[lid.x][i];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let o = p.y_off + row * p.y_stride + col;
        if (p.acc != 0u) { y[o] = y[o] + acc; } else { y[o] = acc; }
    }
}

// Matrix-vector (M = 1, decode): one workgroup of 64 per output, summing over K in parallel.
var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn gemv(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x + wid.y * 65535u;
    if (col >= p.n) { return; } // uniform per workgroup: every invocation of it returns together
    var acc = 0.0;
    for (var kk = lid.x; kk < p.k; kk += 64u) {
        acc += x[p.x_off + kk] * w[p.w_off + col * p.k + kk];
    }
    part[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) { part[lid.x] += part[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let o = p.y_off + col;
        if (p.acc != 0u) { y[o] = y[o] + part[0]; } else { y[o] = part[0]; }
    }
}
