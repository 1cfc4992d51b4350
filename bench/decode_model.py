"""Decode cost of the laptop MoE against its dense twins at three widths, and a two-term bandwidth model of it.

    python bench/decode_model.py [--scales 1,2,4] [--tokens 48] [--repeats 3]

Times batch-1 decoding (KV cache, one torch thread) of `inference_cost.scaled_configs` at each width, fits
ms/token = fixed + MB/bandwidth on the dense models of the widths but the last (the MoE's routing cost is its mean
residual), and checks the prediction on the last width. The last line is
`decode_model gb_per_s=<x> fixed_ms=<x> moe_extra_ms=<x> pred_err_pct=<x> crossover_hidden=<n>`; the same fields and
every measured row go to `bench/results/decode_model.json` (with commit, date, machine and load)."""
import argparse, os
from pathlib import Path
import torch
from compass_nbdev.core import write_record, md_table
from compass_nbdev.inference_cost import measure_decode, fit_decode, predict_ms, scaled_configs, crossover

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scales', default='1,2,4'); ap.add_argument('--tokens', type=int, default=48)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    scales = [int(s) for s in a.scales.split(',')]
    load0 = os.getloadavg()
    rows = measure_decode(tuple(scales), new_tokens=a.tokens, repeats=a.repeats)
    fit = fit_decode([r for r in rows if r['scale'] < scales[-1]])
    for r in rows: r['predicted_ms'] = predict_ms(fit, scaled_configs('laptop', r['scale'])[r['model']])
    print(md_table(rows, '{:.2f}'))
    last = [r for r in rows if r['scale'] == scales[-1]]
    err = max(abs(r['predicted_ms'] / r['ms_per_token'] - 1) for r in last) * 100
    x = crossover(fit)
    rec = write_record('decode_model', dict(gb_per_s=f"{fit['gb_per_s']:.3f}", fixed_ms=f"{fit['fixed_ms']:.2f}", moe_extra_ms=f"{fit['moe_extra_ms']:.2f}",
                                            pred_err_pct=f"{err:.1f}", crossover_hidden=x['hidden']),
                       details=dict(crossover=x, rows=rows, load_before=[round(v, 2) for v in load0]))
    print(rec['line'])

if __name__ == '__main__': main()
