//! The kernels (`kernels/*.wgsl`), compiled once per device, and the recorder that turns one
//! model's forward into a list of dispatches with their bind groups (a plan, reused per token).

/// Every compute pipeline, by entry point. Bind group layouts are the pipelines' own (derived
/// from the bindings each entry point uses).
pub(crate) struct Kernels {
    /// The tiled matrix product and the matrix-vector one, per [`Input`] (linear.wgsl's MODE).
    pub linear: [wgpu::ComputePipeline; 3],
    pub gemv: [wgpu::ComputePipeline; 3],
    pub rmsnorm: wgpu::ComputePipeline,
    pub embed: wgpu::ComputePipeline,
    pub rope_qkv: wgpu::ComputePipeline,
    pub attend: wgpu::ComputePipeline,
    pub attend_split: wgpu::ComputePipeline,
    pub attend_combine: wgpu::ComputePipeline,
    pub conv: wgpu::ComputePipeline,
    pub scan: wgpu::ComputePipeline,
    pub route: wgpu::ComputePipeline,
    pub axpy: wgpu::ComputePipeline,
    pub experts_route: wgpu::ComputePipeline,
    pub experts_gate_up: wgpu::ComputePipeline,
    pub experts_down: wgpu::ComputePipeline,
}

impl Kernels {
    pub fn compile(device: &wgpu::Device) -> Kernels {
        let module = |name: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        };
        let linear = module("linear.wgsl", include_str!("kernels/linear.wgsl"));
        let norm = module("norm.wgsl", include_str!("kernels/norm.wgsl"));
        let embed = module("embed.wgsl", include_str!("kernels/embed.wgsl"));
        let attention = module("attention.wgsl", include_str!("kernels/attention.wgsl"));
        let mamba = module("mamba.wgsl", include_str!("kernels/mamba.wgsl"));
        let moe = module("moe.wgsl", include_str!("kernels/moe.wgsl"));
        let experts = module("experts.wgsl", include_str!("kernels/experts.wgsl"));
        let pipe_with = |m: &wgpu::ShaderModule, entry: &str, constants: &[(&str, f64)]| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: m,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                cache: None,
            })
        };
        let pipe = |m: &wgpu::ShaderModule, entry: &str| pipe_with(m, entry, &[]);
        let modes = |entry: &str| [0.0, 1.0, 2.0].map(|mode| pipe_with(&linear, entry, &[("MODE", mode)]));
        Kernels {
            linear: modes("main"),
            gemv: modes("gemv"),
            rmsnorm: pipe(&norm, "rmsnorm"),
            embed: pipe(&embed, "main"),
            rope_qkv: pipe(&attention, "rope_qkv"),
            attend: pipe(&attention, "attend"),
            attend_split: pipe(&attention, "attend_split"),
            attend_combine: pipe(&attention, "attend_combine"),
            conv: pipe(&mamba, "conv"),
            scan: pipe(&mamba, "scan"),
            route: pipe(&moe, "route"),
            axpy: pipe(&moe, "axpy"),
            experts_route: pipe(&experts, "route"),
            experts_gate_up: pipe(&experts, "gate_up"),
            experts_down: pipe(&experts, "down"),
        }
    }
}

/// What the linear kernels do to their input on its way in (linear.wgsl's MODE).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input {
    /// x as it is.
    Plain,
    /// RMSNorm of x's rows with this epsilon, the norm's weight already folded into the
    /// matrix's columns at upload (model.rs `stacked`).
    Norm(f64),
    /// silu(g)·u of x's rows, g and u their two halves (x (M, 2K) for a matrix (N, K)).
    SwiGlu,
}

impl Input {
    fn mode(self) -> usize {
        match self {
            Input::Plain => 0,
            Input::Norm(_) => 1,
            Input::SwiGlu => 2,
        }
    }
}

/// One recorded dispatch.
pub(crate) struct Op {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    groups: (u32, u32),
}

/// A part of a storage buffer: (buffer, offset in f32 elements). Kernels take offsets as
/// parameters instead, so this is only the buffer.
pub(crate) type Buf = wgpu::Buffer;

/// Workgroups along x at most (WebGPU's default limit); larger grids wrap into y.
const MAX_GROUPS: u32 = 65_535;

/// Records dispatches into a plan.
pub(crate) struct Recorder<'a> {
    device: &'a wgpu::Device,
    queue: &'a wgpu::Queue,
    kernels: &'a Kernels,
    pub ops: Vec<Op>,
}

fn groups_1d(threads: usize) -> (u32, u32) {
    let g = threads.div_ceil(64).max(1) as u32;
    if g <= MAX_GROUPS {
        (g, 1)
    } else {
        (MAX_GROUPS, g.div_ceil(MAX_GROUPS))
    }
}

impl<'a> Recorder<'a> {
    pub fn new(device: &'a wgpu::Device, queue: &'a wgpu::Queue, kernels: &'a Kernels) -> Self {
        Recorder { device, queue, kernels, ops: Vec::new() }
    }

    /// A dispatch of `pipeline` with `params` (u32 words; f32 as bits) at binding 0 and `bufs` at
    /// their bindings.
    fn dispatch(&mut self, pipeline: &wgpu::ComputePipeline, params: &[u32], bufs: &[(u32, &Buf)], groups: (u32, u32)) {
        let mut words = params.to_vec();
        words.resize(params.len().div_ceil(4).max(1) * 4, 0); // uniform structs are 16-byte multiples
                                                              // Written through the queue, not mapped at creation: wgpu panics on a mapped creation
                                                              // once the device is lost, where the queue only records an error.
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (words.len() * 4) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&words));
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            bufs.iter().map(|(b, buf)| wgpu::BindGroupEntry { binding: *b, resource: buf.as_entire_binding() }),
        );
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.ops.push(Op { pipeline: pipeline.clone(), bind, groups });
    }

    /// y[m, y_off..y_off+n] (=|+=) f(x[m, x_off..x_off+k]) · W[n, k]ᵀ, rows at the given strides;
    /// W from element `w_off` of `w`; f is `input` (with [`Input::SwiGlu`], x's rows hold 2k
    /// columns from `x_off`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &mut self,
        x: (&Buf, usize, usize),
        w: (&Buf, usize),
        y: (&Buf, usize, usize),
        m: usize,
        n: usize,
        k: usize,
        acc: bool,
        input: Input,
    ) {
        let (xb, x_stride, x_off) = x;
        let (yb, y_stride, y_off) = y;
        let (wb, w_off) = w;
        let eps = if let Input::Norm(eps) = input { (eps as f32).to_bits() } else { 0 };
        let mut params = [m, n, k, x_stride, x_off, y_stride, y_off, acc as usize, w_off].map(|v| v as u32).to_vec();
        params.push(eps);
        if m == 1 {
            let g = n as u32;
            let groups = if g <= MAX_GROUPS { (g, 1) } else { (MAX_GROUPS, g.div_ceil(MAX_GROUPS)) };
            let kern = &self.kernels.gemv[input.mode()];
            self.dispatch(kern, &params, &[(1, xb), (2, wb), (3, yb)], groups);
        } else {
            let kern = &self.kernels.linear[input.mode()];
            self.dispatch(kern, &params, &[(1, xb), (2, wb), (3, yb)], (n.div_ceil(16) as u32, m.div_ceil(16) as u32));
        }
    }

    pub fn rmsnorm(&mut self, x: &Buf, w: &Buf, y: &Buf, rows: usize, d: usize, eps: f64) {
        let params = [rows as u32, d as u32, (eps as f32).to_bits()];
        let kern = &self.kernels.rmsnorm;
        self.dispatch(kern, &params, &[(1, x), (2, w), (3, y)], (rows as u32, 1));
    }

    /// y[r] = table[tokens[r] - first] for the tokens in `first..first + count` (the table's rows);
    /// rows of other tokens are left as they are (another chunk of the table writes them).
    #[allow(clippy::too_many_arguments)]
    pub fn embed(&mut self, tokens: &Buf, table: &Buf, y: &Buf, rows: usize, d: usize, first: usize, count: usize) {
        let kern = &self.kernels.embed;
        self.dispatch(
            kern,
            &[rows as u32, d as u32, count as u32, first as u32],
            &[(1, tokens), (2, table), (3, y)],
            groups_1d(rows * d),
        );
    }

    /// The fused q|k|v projection's output `qkv` (l, (heads + 2·kv_heads)·dh) to attention's
    /// inputs: RoPE of q into `q` (l, heads·dh), RoPE of k and a copy of v into the caches at rows
    /// pos..pos + l.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_qkv(
        &mut self,
        step: &Buf,
        qkv: &Buf,
        cos_sin: &Buf,
        q: &Buf,
        caches: (&Buf, &Buf),
        l: usize,
        heads: (usize, usize),
        dh: usize,
        positions: usize,
    ) {
        let (heads, kv_heads) = heads;
        let params = [l, heads, dh, kv_heads, 0, positions, 0, 0].map(|v| v as u32);
        let kern = &self.kernels.rope_qkv;
        let bufs = [(1, step), (2, qkv), (3, cos_sin), (5, q), (6, caches.0), (7, caches.1)];
        // One invocation per rotated pair of q and k, and per channel of v.
        self.dispatch(kern, &params, &bufs, groups_1d(l * ((heads + kv_heads) * dh / 2 + kv_heads * dh)));
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &mut self,
        step: &Buf,
        q: &Buf,
        k_cache: &Buf,
        v_cache: &Buf,
        y: &Buf,
        l: usize,
        heads: usize,
        kv_heads: usize,
        dh: usize,
    ) {
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let params = [l as u32, heads as u32, dh as u32, kv_heads as u32, 0, 0, scale.to_bits(), 0];
        let kern = &self.kernels.attend;
        // One workgroup per (query, head).
        self.dispatch(kern, &params, &[(1, step), (2, q), (3, k_cache), (4, v_cache), (5, y)], groups_2d(l * heads));
    }

    /// Flash-decoding: attention of one query (a decode step) `q` (heads·dh) over the cache's
    /// keys 0..=pos, cut into up to `max_splits` splits (`step` says how many this step, and
    /// their length): each split's partial softmax into `part` (heads, max_splits, 2 + dh), then
    /// their combination into `y`. Two dispatches.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_split(
        &mut self,
        step: &Buf,
        q: &Buf,
        caches: (&Buf, &Buf),
        part: &Buf,
        y: &Buf,
        heads: (usize, usize),
        dh: usize,
        max_splits: usize,
    ) {
        let (heads, kv_heads) = heads;
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let params = [1, heads as u32, dh as u32, kv_heads as u32, max_splits as u32, 0, scale.to_bits(), 0];
        let bufs = [(1, step), (2, q), (3, caches.0), (4, caches.1), (8, part)];
        let kernels = self.kernels;
        // One workgroup per (head, split), for as many splits as the longest context takes.
        self.dispatch(&kernels.attend_split, &params, &bufs, groups_2d(heads * max_splits));
        // One workgroup per head.
        self.dispatch(&kernels.attend_combine, &params, &[(1, step), (5, y), (8, part)], groups_2d(heads));
    }

    /// Mixer shapes: (l, ed, n, k, r).
    fn mamba_params(s: (usize, usize, usize, usize, usize)) -> [u32; 8] {
        [s.0 as u32, s.1 as u32, s.2 as u32, s.3 as u32, s.4 as u32, 0, 0, 0]
    }

    /// xc = silu(conv([window; x] ) + bias), x = the first half of xz.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        s: (usize, usize, usize, usize, usize),
        xz: &Buf,
        w: &Buf,
        bias: &Buf,
        window: &Buf,
        xc: &Buf,
    ) {
        let kern = &self.kernels.conv;
        let groups = groups_1d(s.0 * s.1);
        self.dispatch(kern, &Self::mamba_params(s), &[(1, xz), (2, w), (3, bias), (4, window), (7, xc)], groups);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &mut self,
        s: (usize, usize, usize, usize, usize),
        xz: &Buf,
        xc: &Buf,
        dt: &Buf,
        x_dbl: &Buf,
        prm: &Buf,
        h: &Buf,
        y: &Buf,
        window: &Buf,
    ) {
        let kern = &self.kernels.scan;
        let bufs = [(1, xz), (2, xc), (3, dt), (4, x_dbl), (5, prm), (6, h), (7, y), (8, window)];
        // 64 / n channels per workgroup of 64 (one invocation per channel and state).
        let g = s.1.div_ceil(64 / s.2) as u32;
        let groups = if g <= MAX_GROUPS { (g, 1) } else { (MAX_GROUPS, g.div_ceil(MAX_GROUPS)) };
        self.dispatch(kern, &Self::mamba_params(s), &bufs, groups);
    }

    pub fn route(&mut self, logits: &Buf, gates: &Buf, rows: usize, experts: usize, top_k: usize) {
        let kern = &self.kernels.route;
        self.dispatch(
            kern,
            &[rows as u32, 0, experts as u32, top_k as u32],
            &[(1, logits), (3, gates)],
            groups_1d(rows),
        );
    }

    /// y += gates[:, expert] · out.
    #[allow(clippy::too_many_arguments)]
    pub fn axpy(&mut self, out: &Buf, gates: &Buf, y: &Buf, rows: usize, width: usize, experts: usize, expert: usize) {
        let kern = &self.kernels.axpy;
        let params = [rows as u32, width as u32, experts as u32, expert as u32];
        self.dispatch(kern, &params, &[(1, out), (2, gates), (3, y)], groups_1d(rows * width));
    }

    /// The batched MoE's first step, per token: h = rmsnorm(x) (into `h`), the router's logits,
    /// and the top-k experts (`sel`) with their renormalised gates (`gates`), both (rows, k).
    /// Shapes: (rows, d, experts, k, expert width).
    #[allow(clippy::too_many_arguments)]
    pub fn experts_route(
        &mut self,
        s: (usize, usize, usize, usize, usize),
        x: &Buf,
        norm: &Buf,
        router: &Buf,
        h: &Buf,
        sel: &Buf,
        gates: &Buf,
        eps: f64,
    ) {
        let kern = &self.kernels.experts_route;
        let bufs = [(1, x), (2, norm), (3, router), (4, sel), (5, gates), (6, h)];
        self.dispatch(kern, &Self::experts_params(s, eps), &bufs, groups_2d(s.0));
    }

    /// m (rows·k, width) = silu(h · gate[sel]ᵀ) · (h · up[sel]ᵀ), the experts' matrices
    /// concatenated: gate and up (experts·width, d).
    #[allow(clippy::too_many_arguments)]
    pub fn experts_gate_up(
        &mut self,
        s: (usize, usize, usize, usize, usize),
        h: &Buf,
        gate: &Buf,
        up: &Buf,
        sel: &Buf,
        m: &Buf,
    ) {
        let kern = &self.kernels.experts_gate_up;
        let bufs = [(1, h), (2, gate), (3, up), (4, sel), (6, m)];
        self.dispatch(kern, &Self::experts_params(s, 0.0), &bufs, groups_2d(s.0 * s.3 * s.4));
    }

    /// x (rows, d) += Σ_slot gates · (m · down[sel]ᵀ), down concatenated (experts·d, width).
    pub fn experts_down(
        &mut self,
        s: (usize, usize, usize, usize, usize),
        m: &Buf,
        down: &Buf,
        sel: &Buf,
        gates: &Buf,
        x: &Buf,
    ) {
        let kern = &self.kernels.experts_down;
        let bufs = [(1, m), (2, down), (4, sel), (5, gates), (6, x)];
        self.dispatch(kern, &Self::experts_params(s, 0.0), &bufs, groups_2d(s.0 * s.1));
    }

    fn experts_params(s: (usize, usize, usize, usize, usize), eps: f64) -> [u32; 8] {
        [s.0 as u32, s.1 as u32, s.2 as u32, s.3 as u32, s.4 as u32, (eps as f32).to_bits(), 0, 0]
    }
}

/// `g` workgroups (one per item), wrapped into y past the x limit.
fn groups_2d(g: usize) -> (u32, u32) {
    let g = g.max(1) as u32;
    if g <= MAX_GROUPS {
        (g, 1)
    } else {
        (MAX_GROUPS, g.div_ceil(MAX_GROUPS))
    }
}

/// Encodes `ops` into one compute pass.
pub(crate) fn encode(ops: &[Op], encoder: &mut wgpu::CommandEncoder) {
    let mut pass =
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
    for op in ops {
        pass.set_pipeline(&op.pipeline);
        pass.set_bind_group(0, &op.bind, &[]);
        pass.dispatch_workgroups(op.groups.0, op.groups.1, 1);
    }
}
