// y (rows, d) = table[tokens - first] : one invocation per output element. The table holds rows
// first..first + count of the embedding (all of it, or one chunk of a table split to fit the
// adapter's binding limit); tokens outside those rows are another chunk's, left as they are.
struct P {
    rows: u32, d: u32, count: u32, first: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>; // (count, d)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= p.rows * p.d) { return; }
    let r = i / p.d;
    let c = i % p.d;
    let t = tokens[r];
    // ids were checked on the host; a row is never read out of this chunk's bounds
    if (t < p.first || t - p.first >= p.count) { return; }
    y[i] = table[(t - p.first) * p.d + c];
}
