import importlib.util, os, sys
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("genptx", os.path.join(ROOT, "scripts", "gen-ptx.py"))
g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
VARS = [  # name, template args, min blocks
    ("v_pf1", "64, 64, 32, 1, 4, 4, false", 0), ("v_pf1_skip", "64, 64, 32, 1, 4, 4, true", 0),
    ("v_pf1_s8", "64, 64, 32, 1, 8, 4, false", 0), ("v_pf1_s2", "64, 64, 32, 1, 2, 4, false", 0),
    ("v_pf1_p8", "64, 64, 32, 1, 4, 8, false", 0), ("v_pf1_s16", "64, 64, 32, 1, 16, 4, false", 0),
    ("v_pf2_skip", "64, 64, 32, 2, 4, 4, true", 0), ("v_pf1_b4", "64, 64, 32, 1, 4, 4, false", 4),
    ("v32_pf2", "32, 64, 32, 2, 4, 4, false", 0), ("v32_pf1", "32, 64, 32, 1, 4, 4, false", 0),
    ("v128_pf1", "128, 32, 16, 1, 4, 4, false", 0), ("v128_pf1_skip", "128, 32, 16, 1, 4, 4, true", 0),
]
src = open(os.path.join(ROOT, "kernels", "attention.cu")).read()
for name, targs, minb in VARS:
    src += f'''
extern "C" __global__ void __launch_bounds__(FA_THREADS{", %d" % minb if minb else ""}) {name}(const float* Q, const float* K, const float* V, float* O,
    int batch, int seq, int heads, int kv_heads, int d, float scale, int causal, const float* mask) {{
    __shared__ __align__(16) float smem[FlashCfg<{targs}>::FLOATS];
    flash_tiles<FlashCfg<{targs}>>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
}}
'''
tmp = os.path.join(ROOT, ".scratch", "variants.cu")
open(tmp, "w").write(src)
lib = g.load_nvrtc()
g.SRC_DIR = os.path.join(ROOT, "kernels")
ptx = g.compile_one(lib, tmp)
open(os.path.join(ROOT, ".scratch", "variants.ptx"), "w").write(ptx)
print("ok", len(VARS))
