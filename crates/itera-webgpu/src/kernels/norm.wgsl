// Token embedding and RMSNorm.
struct P {
    rows: u32, d: u32, eps: f32, pad0: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;   // rmsnorm: (rows, d)
@group(0) @binding(2) var<storage, read> w: array<f32>;   // (d)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 64>;

// y = x / sqrt(mean(x²) + eps) * w, one workgroup per row.
@compute @workgroup_size(64)
fn rmsnorm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    if (row >= p.rows) { return; }
    var s = 0.0;
    for (var i = lid.x; i < p.d; i += 64u) {
        let v = x[row * p.d + i];
        s += v * v;
    }
    red[lid.x] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid.x < k) { red[lid.x] += red[lid.x + k]; }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.d) + p.eps);
    for (var i = lid.x; i < p.d; i += 64u) {
        y[row * p.d + i] = x[row * p.d + i] * scale * w[i];
    }
}
