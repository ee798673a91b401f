// The Compress tab's estimate card computed in the page (issue 27, item 9): the arithmetic of
// compressor/estimate.py (`estimate`, `quantized_checkpoint_bytes`) and ui/compress.py's `estimate_card`, fed by the
// model payload of ui/live_estimate.py. Python stays the source of truth: the server's preview redraws the card a
// moment later, and tests/ui/test_live_estimate.py checks both give the same HTML. Whatever this cannot decide (no
// payload, a refused or multi-stage cut, a layer-by-layer run, a refusal on show) returns `current` unchanged and
// waits for the server.
(payload, current, note, keep_ratio, neuron_score, experts_keep, expert_score, layers_drop, sparsity, allocation,
 stages, steps, final_share, temperature, loss, lr, ce_weight, calib_tokens, calib_seq, eval_tokens, perplexity,
 speed, seed, lm_eval_tasks, quantize) => {
  const halfEven = (x) => { const f = Math.floor(x), d = x - f;
                            return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1); };
  const fixed = (x, n) => (halfEven(x * 10 ** n) / 10 ** n).toFixed(n);      // Python's f"{x:.nf}"
  const g3 = (x) => {                                                          // Python's f"{x:.3g}", x >= 1
    let e = Math.floor(Math.log10(x));
    let m = halfEven(e <= 2 ? x * 10 ** (2 - e) : x / 10 ** (e - 2));        // 3 significant digits, 100..1000
    if (m >= 1000) { m = halfEven(m / 10); e += 1; }
    if (e >= 3) return String(m / 100) + 'e+' + String(e).padStart(2, '0');
    const t = (m * 10 ** (e - 2)).toFixed(Math.max(0, 2 - e));
    return t.includes('.') ? t.replace(/\.?0+$/, '') : t;
  };
  const count = (n) => {
    for (const [u, s] of [['B', 1e9], ['M', 1e6], ['K', 1e3]])
      if (Math.abs(n) >= s) return Math.abs(n) / s < 100 ? `${g3(n / s)} ${u}` : `${fixed(n / s, 0)} ${u}`;
    return fixed(n, 0);
  };
  const bytes = (n) => {
    for (const [u, s] of [['GB', 2 ** 30], ['MB', 2 ** 20], ['KB', 2 ** 10]]) if (n >= s) return `${g3(n / s)} ${u}`;
    return `${fixed(n, 0)} B`;
  };
  const pct = (x) => `${fixed(x * 100, 0)}%`;
  const esc = (t) => String(t).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;').replace(/'/g, '&#x27;');
  if (!payload || !payload.shape || /msg-error/.test(current || '') || /data-layered='true'/.test(note || '')) {
    return current;
  }
  const S = payload.shape, lim = payload.limits;
  const [H, E, k, M, L] = [S.hidden, S.num_experts, S.top_k, S.moe_layers, S.num_layers];
  const r = Number(keep_ratio), s = Number(sparsity), d = Math.trunc(Number(layers_drop)), nst = Math.trunc(stages);
  const keepE = experts_keep === null || Math.trunc(experts_keep) >= E ? null : Math.trunc(experts_keep);
  // check_settings and compressor.feasibility: anything refused, or a staged expert cut, goes to the server
  if (!(r > 0 && r <= 1) || !(s >= 0 && s < 1) || d < 0 || (keepE !== null && keepE < 1)) return current;
  const cuts = {expert_pruning: keepE !== null && keepE < lim.num_experts, neuron_slimming: r < 1,
                layer_dropping: d > 0};
  if (Object.keys(cuts).some((c) => cuts[c] && lim.refusals.includes(c))) return current;
  if (keepE !== null && (keepE > lim.num_experts || keepE < lim.top_k || lim.groups > 1
                         || (cuts.expert_pruning && nst > 1))) return current;
  if (d > Math.max(lim.num_layers - 1, 0)) return current;
  // compressor.estimate.estimate
  const pe = S.expert_params, rest = S.layer_rest_params;
  let width = Math.max(1, Math.min(S.expert_width, Math.floor(r * S.expert_width + 0.5)));
  if (width >= 8) width -= width % 8;                                         // compressor.widths.align_width
  const pe2 = pe - (S.expert_width - width) * S.neuron_params;
  const e2 = keepE || E;
  const dMoe = Math.min(d, M), dDense = Math.max(d - M, 0), m2 = M - dMoe, l2 = L - d;
  const total = (S.params_total - dMoe * (rest + E * pe + E * H) - dDense * rest
                 - m2 * (E * pe - e2 * pe2 + (E - e2) * H));
  const active = (S.params_active - dMoe * (rest + k * pe + E * H) - dDense * rest
                  - m2 * (k * (pe - pe2) + (E - e2) * H));
  const fixedParams = S.embedding_params + m2 * e2 * H + (2 * l2 + 1) * H;
  const nzActive = active - s * (active - fixedParams);
  const notes = [];
  if (dDense) notes.push(`${d} layers dropped but only ${M} are MoE layers: the rest are counted as dense layers`);
  if (d && M < L) notes.push('dropped layers are assumed to be MoE layers of average size; the job drops the layers '
                             + 'with the lowest block influence');
  if (s) notes.push('unstructured zeros are stored: the checkpoint keeps its size, and the sparse speed-up needs '
                    + 'sparse kernels');
  const t0 = S.params_total, t1 = halfEven(total), a0 = S.params_active, a1 = halfEven(active);
  const ck0 = halfEven(S.params_total * S.bytes_per_param), ck1 = halfEven(total * S.bytes_per_param);
  const flops = (a) => 2.0 * (a - (S.tied_embeddings ? 0 : S.vocab * H));
  const cells = [
    ['params total', count(t1), `from ${count(t0)} (${pct(t1 / t0)})`],
    ['params active', count(a1), `from ${count(a0)} (${pct(a1 / a0)}) per token`],
    ['checkpoint', bytes(ck1), `from ${bytes(ck0)}`],
    ['speed-up', `${fixed(flops(a0) / flops(active), 2)}x`, 'theoretical, active FLOPs before / after'],
    ['experts', `${e2} x ${width}`, 'per layer x width'],
    ['layers', String(l2), `${m2} MoE`],
  ];
  const q = payload.quantize[quantize];
  if (q === undefined) return current;
  if (q) {                                                   // quantized_checkpoint_bytes / compressed_checkpoint_bytes
    const K = S.embedding_params + m2 * e2 * H + (2 * l2 + 1) * H;
    let qb;
    if (q.torchao) { const qq = t1 - K; qb = halfEven(qq * 1.0 + 4 * qq / H + K * S.bytes_per_param); }
    else { const X = m2 * e2 * pe2, R = Math.max(0.0, t1 - K - X);
           qb = halfEven(X * q.bits_experts / 8 + R * q.bits_attention / 8 + K * S.bytes_per_param); }
    cells.push([`${q.label} checkpoint`, bytes(qb), `from ${bytes(ck1)}`]);
  }
  if (s) cells.push(['non-zero active', count(halfEven(nzActive)),
                     `${fixed(flops(a0) / flops(nzActive), 2)}x with sparse kernels`]);
  const card = '<div class="card">' + cells.map(([a, b, c]) => `<div class="cell"><div class="k">${esc(a)}</div>`
    + `<div class="v">${esc(b)}</div><div class="s">${esc(c)}</div></div>`).join('') + '</div>';
  const small = notes.map((n) => `<div style='font-size:12px;color:#64748b'>· ${esc(n)}</div>`).join('');
  return "<div style='font-weight:600;margin:2px 0'>Estimated result</div>" + card + small;
}
