// y (rows, d) = table[tokens] : one invocation per output element.
struct P {
    rows: u32, d: u32, vocab: u32, pad0: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>; // (vocab, d)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= p.rows * p.d) { return; }
    let r = i / p.d;
    let c = i % p.d;
    let t = min(tokens[r], p.vocab - 1u); // ids were checked on the host; never read out of bounds
    y[i] = table[t * p.d + c];
}
