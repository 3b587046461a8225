// mmpow-1 mining kernels (DESIGN.md §2): noise, tiled GEMM over k-slabs with the per-slab
// XOR fold of every 16x16 tile, the transcript J, keyed BLAKE3 of J and the share-target test.
//
// Build parameters (-D):
//   BM, BN   rows / columns of the output block of one work-group (multiples of 16)
//   WM, WN   rows / columns of the micro-tile of one work-item (divide 16)
//   KC       inner-dimension chunk staged in local memory (divides r)
//   VW       vector width of the global loads (chars; divides KC)
//   ACC_FLOAT 1: multiply-add in float32, exact per slab, then add to int32 accumulators
//             0: multiply-add in int32
//   PLAIN_GEMM 1: the same tiling without noise, fold, transcript or hash (benchmark baseline)
//   INTERLEAVE 1: interleaved columns in `mine` (needs BN == 16 * WN); the host always sets it
//   MMPOW_DOT the inner product of `mine` (worker/backends/opencl_dot.py chooses it per device):
//     DOT_PORTABLE   int8 widened to float32 (ACC_FLOAT) or int32, one multiply-add per MAC
//     DOT_PACKED     4 int8 of the inner index packed in a uint, dot4 in plain C (any device:
//                    the layout of the fast paths below, exercised where they do not build)
//     DOT_KHR_PACKED dot_acc_sat_4x8packed_ss_int (cl_khr_integer_dot_product; Intel, others)
//     DOT_PTX_DP4A   inline PTX dp4a.s32.s32 (NVIDIA sm_61+)
//     DOT_AMD_SDOT4  __builtin_amdgcn_sdot4 (AMD gfx906+, v_dot4_i32_i8)
//     DOT_PTX_MMA    inline PTX mma.sync m16n8k32 s8 (NVIDIA tensor cores, sm_80+): another
//                    `mine`, in work-groups of (32, BM / 16), one warp per tile row; KC % 32 == 0
//     DOT_MMA_EMULATED that kernel with each mma.sync done in C from the 32 lanes' fragments
//                    (any device: its fragment loads, fold and stores, tested where no tensor
//                    cores are)
//   The packed paths accumulate in int32 (ACC_FLOAT is ignored) and need KC % 4 == 0.
//   Exact: every operand is one int8 (noisy entries fit, SPEC §7) and |acc| <= 128^2 * 65536
//   = 2^30 < 2^31, so neither the wrapping dp4a/sdot4 nor the saturating khr form ever
//   differs from the reference's int32 sum.
// `mine` runs in work-groups of (BN / WN, BM / WM); `mine_item` in work-groups of one.

#ifndef BM
#define BM 32
#endif
#ifndef BN
#define BN 32
#endif
#ifndef WM
#define WM 4
#endif
#ifndef WN
#define WN 4
#endif
#ifndef KC
#define KC 16
#endif
#ifndef VW
#define VW 4
#endif
#ifndef ACC_FLOAT
#define ACC_FLOAT 1
#endif
#ifndef PLAIN_GEMM
#define PLAIN_GEMM 0
#endif

#define DOT_PORTABLE 0
#define DOT_PACKED 1
#define DOT_KHR_PACKED 2
#define DOT_PTX_DP4A 3
#define DOT_AMD_SDOT4 4
#define DOT_PTX_MMA 5
#define DOT_MMA_EMULATED 6
#define MMA (MMPOW_DOT == DOT_PTX_MMA || MMPOW_DOT == DOT_MMA_EMULATED)
#ifndef MMPOW_DOT
#define MMPOW_DOT DOT_PORTABLE
#endif
#define PACKED (MMPOW_DOT != DOT_PORTABLE)
#if PACKED
#if KC % 4
#error the packed dot paths need KC % 4 == 0
#endif
#undef ACC_FLOAT
#define ACC_FLOAT 0
#endif

// acc + the dot product of the 4 int8 packed in a and in b (same byte order in both)
#if MMPOW_DOT == DOT_PACKED
int dot4(const uint a, const uint b, const int acc) {
    const char4 x = as_char4(a);
    const char4 y = as_char4(b);
    return acc + x.s0 * y.s0 + x.s1 * y.s1 + x.s2 * y.s2 + x.s3 * y.s3;
}
#elif MMPOW_DOT == DOT_KHR_PACKED
#define dot4(a, b, acc) dot_acc_sat_4x8packed_ss_int((a), (b), (acc))
#elif MMPOW_DOT == DOT_PTX_DP4A
int dot4(const uint a, const uint b, const int acc) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(acc));
    return d;
}
#elif MMPOW_DOT == DOT_AMD_SDOT4
#define dot4(a, b, acc) __builtin_amdgcn_sdot4(as_int(a), as_int(b), (acc), false)
#elif MMA
#if KC % 32
#error the mma kernel needs KC % 32 == 0
#endif
#if MMPOW_DOT == DOT_PTX_MMA
// c[0..3] += the 16x8 block of A (16x32, row) times B (32x8, col), int8 in, int32 wrapping.
// Fragments (PTX ISA, m16n8k32 .s8), lane = 4g + t: a0 = A[g][4t..4t+3], a1 = A[g+8][4t..],
// a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]; b0 = B[4t..4t+3][g], b1 = B[16+4t..][g];
// c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1].
#define MMA_S8(c, a0, a1, a2, a3, b0, b1)                                                \
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "             \
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                                  \
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])                                 \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
#else
// The same, in C: every lane leaves its fragments in local memory (fa, fb: this warp's) and
// computes its c from the 16x32 A and 32x8 B they hold, located as the ISA lays them out:
// A[row][kk] in lane 4 (row % 8) + (kk % 16) / 4, register (row >= 8) + 2 (kk >= 16);
// B[kk][col] in lane 4 col + (kk % 16) / 4, register (kk >= 16); byte kk % 4 of the word.
// Every work-item calls it the same number of times (its barriers are uniform).
#define BYTE(w, b) ((int)(char)((w) >> (8 * (b))))
void mma_emulated(int *c, const uint a0, const uint a1, const uint a2, const uint a3,
                  const uint b0, const uint b1, const int lane, __local uint (*fa)[4],
                  __local uint (*fb)[2]) {
    fa[lane][0] = a0;
    fa[lane][1] = a1;
    fa[lane][2] = a2;
    fa[lane][3] = a3;
    fb[lane][0] = b0;
    fb[lane][1] = b1;
    barrier(CLK_LOCAL_MEM_FENCE);
    const int g = lane >> 2;
    const int t = lane & 3;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i >> 1);
        const int col = 2 * t + (i & 1);
        int sum = 0;
        for (int kk = 0; kk < 32; kk++) {
            const uint wa = fa[(row & 7) * 4 + ((kk & 15) >> 2)][(row >> 3) + 2 * (kk >> 4)];
            const uint wb = fb[col * 4 + ((kk & 15) >> 2)][kk >> 4];
            sum += BYTE(wa, kk & 3) * BYTE(wb, kk & 3);
        }
        c[i] += sum;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}
#define MMA_S8(c, a0, a1, a2, a3, b0, b1) \
    mma_emulated(c, a0, a1, a2, a3, b0, b1, lane, fa[wr], fb[wr])
#endif
#elif MMPOW_DOT != DOT_PORTABLE
#error unknown MMPOW_DOT
#endif

#if MMA
#define LX 32        // one warp: its lanes
#define LY (BM / 16) // warps: one per tile row of the block
#else
#define LX (BN / WN)
#define LY (BM / WM)
#endif
#define LSIZE (LX * LY)
#define TILES_M (BM / 16)
#define TILES_N (BN / 16)
#define NT (TILES_M * TILES_N)

// Columns of a work-item: with INTERLEAVE (16 work-items across, LX == 16) they are
// interleaved, column j * 16 + lx, so neighbouring work-items read neighbouring local-memory
// words and a work-item's column j lies in tile column j of the block; otherwise contiguous.
// (Meant for implicitly vectorising CPU compilers such as PoCL's; it was reported no
// faster there, so the host leaves it off unless KernelConfig.interleave asks for it.)
#ifndef INTERLEAVE
#define INTERLEAVE (LX == 16)
#endif
#if INTERLEAVE && LX != 16
#error INTERLEAVE needs 16 work-items across (BN == 16 * WN)
#endif
#if INTERLEAVE
#define COL(j) ((j) * 16 + lx)
#else
#define COL(j) (lx * WN + (j))
#endif

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

#if ACC_FLOAT
typedef float elem_t;
#define CONVERT_VEC CAT(convert_float, VW)
typedef CAT(float, VW) elemv_t;
#else
typedef int elem_t;
#define CONVERT_VEC CAT(convert_int, VW)
typedef CAT(int, VW) elemv_t;
#endif
#define VLOAD CAT(vload, VW)

// ---- noise: out[i, l] = x[i, l] + e[i, f[l]] - e[i, g[l]] ------------------------------
__kernel void apply_noise(__global const char *x, __global const char *e,
                          __global const ushort *f, __global const ushort *g,
                          __global char *out, const int k, const int r) {
    const int l = get_global_id(0);
    const int i = get_global_id(1);
    const size_t at = (size_t)i * (size_t)k + (size_t)l;
    const int v = (int)x[at] + (int)e[i * r + f[l]] - (int)e[i * r + g[l]];
    out[at] = (char)v;
}

// ---- noise into the tile-packed layout of mine_item: out[(i / 16, l, i % 16)] --------
__kernel void apply_noise_packed(__global const char *x, __global const char *e,
                                 __global const ushort *f, __global const ushort *g,
                                 __global char *out, const int k, const int r) {
    const int l = get_global_id(0);
    const int i = get_global_id(1);
    const int v = (int)x[(size_t)i * (size_t)k + (size_t)l] + (int)e[i * r + f[l]]
                  - (int)e[i * r + g[l]];
    out[((size_t)(i / 16) * (size_t)k + (size_t)l) * 16 + (i % 16)] = (char)v;
}

// ---- BLAKE3: one compression of one 64-byte block --------------------------------------
#define ROTR(x, n) rotate((uint)(x), (uint)(32 - (n)))
#define G(a, b, c, d, mx, my)       \
    a = a + b + mx;                 \
    d = ROTR(d ^ a, 16);            \
    c = c + d;                      \
    b = ROTR(b ^ c, 12);            \
    a = a + b + my;                 \
    d = ROTR(d ^ a, 8);             \
    c = c + d;                      \
    b = ROTR(b ^ c, 7);

__constant uchar BLAKE3_PERM[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

// keyed hash of one full block: counter 0, block_len 64, CHUNK_START|CHUNK_END|ROOT|KEYED_HASH
void blake3_keyed_block(__global const uint *key, const uint *block, uint *out) {
    uint m[16];
    uint t[16];
    for (int i = 0; i < 16; i++) m[i] = block[i];
    uint v0 = key[0], v1 = key[1], v2 = key[2], v3 = key[3];
    uint v4 = key[4], v5 = key[5], v6 = key[6], v7 = key[7];
    uint v8 = 0x6A09E667u, v9 = 0xBB67AE85u, v10 = 0x3C6EF372u, v11 = 0xA54FF53Au;
    uint v12 = 0u, v13 = 0u, v14 = 64u, v15 = 1u | 2u | 8u | 16u;
    for (int round = 0; round < 7; round++) {
        G(v0, v4, v8, v12, m[0], m[1]);
        G(v1, v5, v9, v13, m[2], m[3]);
        G(v2, v6, v10, v14, m[4], m[5]);
        G(v3, v7, v11, v15, m[6], m[7]);
        G(v0, v5, v10, v15, m[8], m[9]);
        G(v1, v6, v11, v12, m[10], m[11]);
        G(v2, v7, v8, v13, m[12], m[13]);
        G(v3, v4, v9, v14, m[14], m[15]);
        for (int i = 0; i < 16; i++) t[i] = m[BLAKE3_PERM[i]];
        for (int i = 0; i < 16; i++) m[i] = t[i];
    }
    out[0] = v0 ^ v8;
    out[1] = v1 ^ v9;
    out[2] = v2 ^ v10;
    out[3] = v3 ^ v11;
    out[4] = v4 ^ v12;
    out[5] = v5 ^ v13;
    out[6] = v6 ^ v14;
    out[7] = v7 ^ v15;
}

// 256-bit little-endian compare: digest <= limit
int digest_meets(const uint *d, __global const uint *limit) {
    for (int i = 7; i >= 0; i--) {
        if (d[i] < limit[i]) return 1;
        if (d[i] > limit[i]) return 0;
    }
    return 1;
}

// ---- the mining kernel -------------------------------------------------------------------
// One work-group computes rows row0 .. row0+BM of a band and columns col0 .. col0+BN,
// over every slab of width r. `a` is m x k and `bt` is n x k (noisy unless PLAIN_GEMM).
#if !MMA
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void mine(__global const char *a, __global const char *bt,
          const int n, const int k, const int r, const int tile_row0,
          __global const uint *key, __global const uint *limit,
          __global uint *jout, __global volatile uint *win_count, __global uint *winners,
          const uint win_cap, __global int *acc_out, const int write_acc) {
#if PACKED
    __local uint As[KC / 4][BM];  // As[q][i]: inner indices 4q .. 4q+3 of row i, packed
    __local uint Bs[KC / 4][BN];
#else
    __local elem_t As[KC][BM];
    __local elem_t Bs[KC][BN];
#endif
#if !PLAIN_GEMM
#if INTERLEAVE
    __local uint xr[WN][LY][LX];
#else
    __local uint xr[1][LY][LX];
#endif
    __local uint Jl[NT][16];
#endif
    const int lx = get_local_id(0);
    const int ly = get_local_id(1);
    const int lid = ly * LX + lx;
    const int row0 = tile_row0 * 16 + get_group_id(1) * BM;
    const int col0 = get_group_id(0) * BN;

    int acc[WM][WN];
#if ACC_FLOAT
    float part[WM][WN];
#endif
    for (int i = 0; i < WM; i++)
        for (int j = 0; j < WN; j++) {
            acc[i][j] = 0;
#if ACC_FLOAT
            part[i][j] = 0.0f;
#endif
        }
#if !PLAIN_GEMM
    if (lid < NT) {
        for (int w = 0; w < 16; w++) Jl[lid][w] = 0u;
        Jl[lid][0] = (uint)(row0 / 16 + lid / TILES_N);
        Jl[lid][1] = (uint)(col0 / 16 + lid % TILES_N);
    }
#endif
    const int chunks_per_slab = r / KC;
    const int slabs = k / r;
    for (int s = 0; s < slabs; s++) {
        for (int cs = 0; cs < chunks_per_slab; cs++) {
            const int kb = s * r + cs * KC;
#if PACKED
            // k, kb and KC are multiples of 4: every packed word is an aligned uint
            __global const uint *a4 = (__global const uint *)a;
            __global const uint *b4 = (__global const uint *)bt;
            for (int idx = lid; idx < BM * (KC / 4); idx += LSIZE) {
                const int i = idx / (KC / 4);
                const int q = idx % (KC / 4);
                As[q][i] = a4[((size_t)(row0 + i) * k + kb) / 4 + q];
            }
            for (int idx = lid; idx < BN * (KC / 4); idx += LSIZE) {
                const int j = idx / (KC / 4);
                const int q = idx % (KC / 4);
                Bs[q][j] = b4[((size_t)(col0 + j) * k + kb) / 4 + q];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int q = 0; q < KC / 4; q++) {
                uint ar[WM], br[WN];
                for (int i = 0; i < WM; i++) ar[i] = As[q][ly * WM + i];
                for (int j = 0; j < WN; j++) br[j] = Bs[q][COL(j)];
                for (int i = 0; i < WM; i++)
                    for (int j = 0; j < WN; j++) acc[i][j] = dot4(ar[i], br[j], acc[i][j]);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#else
            for (int idx = lid; idx < BM * (KC / VW); idx += LSIZE) {
                const int i = idx / (KC / VW);
                const int cc = (idx % (KC / VW)) * VW;
                const elemv_t v = CONVERT_VEC(VLOAD(0, a + (size_t)(row0 + i) * k + kb + cc));
                const elem_t *pv = (const elem_t *)&v;
                for (int q = 0; q < VW; q++) As[cc + q][i] = pv[q];
            }
            for (int idx = lid; idx < BN * (KC / VW); idx += LSIZE) {
                const int j = idx / (KC / VW);
                const int cc = (idx % (KC / VW)) * VW;
                const elemv_t v = CONVERT_VEC(VLOAD(0, bt + (size_t)(col0 + j) * k + kb + cc));
                const elem_t *pv = (const elem_t *)&v;
                for (int q = 0; q < VW; q++) Bs[cc + q][j] = pv[q];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int kk = 0; kk < KC; kk++) {
                elem_t ar[WM], br[WN];
                for (int i = 0; i < WM; i++) ar[i] = As[kk][ly * WM + i];
                for (int j = 0; j < WN; j++) br[j] = Bs[kk][COL(j)];
                for (int i = 0; i < WM; i++)
                    for (int j = 0; j < WN; j++) {
#if ACC_FLOAT
                        part[i][j] += ar[i] * br[j];
#else
                        acc[i][j] += ar[i] * br[j];
#endif
                    }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
        }
#if ACC_FLOAT
        // exact: |slab partial| <= 127^2 * r < 2^24
        for (int i = 0; i < WM; i++)
            for (int j = 0; j < WN; j++) {
                acc[i][j] += (int)part[i][j];
                part[i][j] = 0.0f;
            }
#endif
#if !PLAIN_GEMM
#if INTERLEAVE
        for (int j = 0; j < WN; j++) {
            uint x = 0u;
            for (int i = 0; i < WM; i++) x ^= (uint)acc[i][j];
            xr[j][ly][lx] = x;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < NT) {
            const int tr = lid / TILES_N;
            const int tc = lid % TILES_N;
            uint y = 0u;
            for (int ii = 0; ii < 16 / WM; ii++)
                for (int jj = 0; jj < 16; jj++) y ^= xr[tc][tr * (16 / WM) + ii][jj];
            const uint w = Jl[lid][s % 16];
            Jl[lid][s % 16] = rotate(w, 13u) ^ y;
        }
#else
        uint x = 0u;
        for (int i = 0; i < WM; i++)
            for (int j = 0; j < WN; j++) x ^= (uint)acc[i][j];
        xr[0][ly][lx] = x;
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < NT) {
            const int tr = lid / TILES_N;
            const int tc = lid % TILES_N;
            uint y = 0u;
            for (int ii = 0; ii < 16 / WM; ii++)
                for (int jj = 0; jj < 16 / WN; jj++)
                    y ^= xr[0][tr * (16 / WM) + ii][tc * (16 / WN) + jj];
            const uint w = Jl[lid][s % 16];
            Jl[lid][s % 16] = rotate(w, 13u) ^ y;
        }
#endif
#endif
    }
    if (write_acc) {
        for (int i = 0; i < WM; i++)
            for (int j = 0; j < WN; j++)
                acc_out[(size_t)(row0 + ly * WM + i) * n + col0 + COL(j)] = acc[i][j];
    }
#if !PLAIN_GEMM
    if (lid < NT) {
        uint jw[16];
        uint d[8];
        for (int w = 0; w < 16; w++) jw[w] = Jl[lid][w];
        const uint ti = (uint)(row0 / 16 + lid / TILES_N);
        const uint tj = (uint)(col0 / 16 + lid % TILES_N);
        const size_t at = ((size_t)ti * (size_t)(n / 16) + tj) * 16;
        for (int w = 0; w < 16; w++) jout[at + w] = jw[w];
        blake3_keyed_block(key, jw, d);
        if (digest_meets(d, limit)) {
            const uint slot = atomic_inc(win_count);
            if (slot < win_cap) {
                winners[slot * 10 + 0] = ti;
                winners[slot * 10 + 1] = tj;
                for (int w = 0; w < 8; w++) winners[slot * 10 + 2 + w] = d[w];
            }
        }
    }
#endif
}

#else
// ---- the mining kernel on tensor cores (DOT_PTX_MMA, DOT_MMA_EMULATED) ------------------
// The same job as the `mine` above: warp ly computes tile row ly of the BM x BN block, all
// TILES_N tiles of it, each tile two 16x8 mma per 32 inner indices; lane 4g + t holds, per
// tile and half h, the accumulators of rows g, g + 8 and columns h * 8 + 2t, h * 8 + 2t + 1.
// Local rows are padded by 8 words so that a fragment's 32 reads hit 32 banks.
#define PAD 8
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void mine(__global const char *a, __global const char *bt,
          const int n, const int k, const int r, const int tile_row0,
          __global const uint *key, __global const uint *limit,
          __global uint *jout, __global volatile uint *win_count, __global uint *winners,
          const uint win_cap, __global int *acc_out, const int write_acc) {
    __local uint As[KC / 4][BM + PAD];
    __local uint Bs[KC / 4][BN + PAD];
#if !PLAIN_GEMM
    __local uint xm[NT][32];
    __local uint Jl[NT][16];
#endif
#if MMPOW_DOT == DOT_MMA_EMULATED
    __local uint fa[LY][32][4];
    __local uint fb[LY][32][2];
#endif
    const int lane = get_local_id(0);
    const int wr = get_local_id(1);
    const int lid = wr * 32 + lane;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int row0 = tile_row0 * 16 + get_group_id(1) * BM;
    const int col0 = get_group_id(0) * BN;
    int acc[TILES_N][2][4];
#pragma unroll
    for (int tc = 0; tc < TILES_N; tc++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[tc][h][i] = 0;
#if !PLAIN_GEMM
    if (lid < NT) {
        for (int w = 0; w < 16; w++) Jl[lid][w] = 0u;
        Jl[lid][0] = (uint)(row0 / 16 + lid / TILES_N);
        Jl[lid][1] = (uint)(col0 / 16 + lid % TILES_N);
    }
#endif
    __global const uint *a4 = (__global const uint *)a;
    __global const uint *b4 = (__global const uint *)bt;
    const int slabs = k / r;
    for (int s = 0; s < slabs; s++) {
        for (int cs = 0; cs < r / KC; cs++) {
            const int kb = s * r + cs * KC;
            for (int idx = lid; idx < BM * (KC / 4); idx += LSIZE) {
                const int i = idx / (KC / 4);
                const int q = idx % (KC / 4);
                As[q][i] = a4[((size_t)(row0 + i) * k + kb) / 4 + q];
            }
            for (int idx = lid; idx < BN * (KC / 4); idx += LSIZE) {
                const int j = idx / (KC / 4);
                const int q = idx % (KC / 4);
                Bs[q][j] = b4[((size_t)(col0 + j) * k + kb) / 4 + q];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int q0 = 0; q0 < KC / 4; q0 += 8) {
                const int ra = wr * 16 + g;
                const uint a0 = As[q0 + t][ra];
                const uint a1 = As[q0 + t][ra + 8];
                const uint a2 = As[q0 + 4 + t][ra];
                const uint a3 = As[q0 + 4 + t][ra + 8];
#pragma unroll
                for (int tc = 0; tc < TILES_N; tc++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int cb = tc * 16 + h * 8 + g;
                        MMA_S8(acc[tc][h], a0, a1, a2, a3, Bs[q0 + t][cb], Bs[q0 + 4 + t][cb]);
                    }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
#if !PLAIN_GEMM
#pragma unroll
        for (int tc = 0; tc < TILES_N; tc++) {
            uint x = 0u;
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int i = 0; i < 4; i++) x ^= (uint)acc[tc][h][i];
            xm[wr * TILES_N + tc][lane] = x;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < NT) {
            uint y = 0u;
            for (int w = 0; w < 32; w++) y ^= xm[lid][w];
            const uint old = Jl[lid][s % 16];
            Jl[lid][s % 16] = rotate(old, 13u) ^ y;
        }
#endif
    }
    if (write_acc) {
#pragma unroll
        for (int tc = 0; tc < TILES_N; tc++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int row = row0 + wr * 16 + g + 8 * (i >> 1);
                    const int col = col0 + tc * 16 + h * 8 + 2 * t + (i & 1);
                    acc_out[(size_t)row * n + col] = acc[tc][h][i];
                }
    }
#if !PLAIN_GEMM
    if (lid < NT) {
        uint jw[16];
        uint d[8];
        for (int w = 0; w < 16; w++) jw[w] = Jl[lid][w];
        const uint ti = (uint)(row0 / 16 + lid / TILES_N);
        const uint tj = (uint)(col0 / 16 + lid % TILES_N);
        const size_t at = ((size_t)ti * (size_t)(n / 16) + tj) * 16;
        for (int w = 0; w < 16; w++) jout[at + w] = jw[w];
        blake3_keyed_block(key, jw, d);
        if (digest_meets(d, limit)) {
            const uint slot = atomic_inc(win_count);
            if (slot < win_cap) {
                winners[slot * 10 + 0] = ti;
                winners[slot * 10 + 1] = tj;
                for (int w = 0; w < 8; w++) winners[slot * 10 + 2 + w] = d[w];
            }
        }
    }
#endif
}
#endif

// ---- one work-item per tile (CPU devices) ----------------------------------------------
// `ap` and `bp` are tile-packed: element (row i, inner l) at ((i / 16) * k + l) * 16 + i % 16,
// so one tile's 16 values of one inner index are one char16. Each work-item keeps its
// tile's 16 rows as float8 pairs (slab partials) and int8 pairs: explicit SIMD for
// implementations (PoCL) that vectorise poorly across work-items. Launched in work-groups
// of one (KernelConfig.local_size).
__kernel void mine_item(__global const char *ap, __global const char *bp,
                        const int n, const int k, const int r, const int tile_row0,
                        __global const uint *key, __global const uint *limit,
                        __global uint *jout, __global volatile uint *win_count,
                        __global uint *winners, const uint win_cap,
                        __global int *acc_out, const int write_acc) {
    const int tj = get_global_id(0);
    const int ti = tile_row0 + get_global_id(1);
    __global const char *pa = ap + (size_t)ti * (size_t)k * 16;
    __global const char *pb = bp + (size_t)tj * (size_t)k * 16;
    // 8-wide halves: 16-wide float vectors break some PoCL/LLVM builds
    int8 acc_lo[16], acc_hi[16];
    for (int i = 0; i < 16; i++) {
        acc_lo[i] = (int8)(0);
        acc_hi[i] = (int8)(0);
    }
    uint jw[16];
    for (int w = 0; w < 16; w++) jw[w] = 0u;
    jw[0] = (uint)ti;
    jw[1] = (uint)tj;
    const int slabs = k / r;
    for (int s = 0; s < slabs; s++) {
        float8 p_lo[16], p_hi[16];
        for (int i = 0; i < 16; i++) {
            p_lo[i] = (float8)(0.0f);
            p_hi[i] = (float8)(0.0f);
        }
        for (int l = s * r; l < (s + 1) * r; l++) {
            const float8 a_lo = convert_float8(vload8(2 * l, pa));
            const float8 a_hi = convert_float8(vload8(2 * l + 1, pa));
            const float8 b_lo = convert_float8(vload8(2 * l, pb));
            const float8 b_hi = convert_float8(vload8(2 * l + 1, pb));
#define ROW(i, av)                          \
    p_lo[i] += (float8)(av) * b_lo;         \
    p_hi[i] += (float8)(av) * b_hi;
            ROW(0, a_lo.s0) ROW(1, a_lo.s1) ROW(2, a_lo.s2) ROW(3, a_lo.s3)
            ROW(4, a_lo.s4) ROW(5, a_lo.s5) ROW(6, a_lo.s6) ROW(7, a_lo.s7)
            ROW(8, a_hi.s0) ROW(9, a_hi.s1) ROW(10, a_hi.s2) ROW(11, a_hi.s3)
            ROW(12, a_hi.s4) ROW(13, a_hi.s5) ROW(14, a_hi.s6) ROW(15, a_hi.s7)
#undef ROW
        }
        int8 x = (int8)(0);
        for (int i = 0; i < 16; i++) {
            // exact: |slab partial| <= 127^2 * r < 2^24
            acc_lo[i] += convert_int8(p_lo[i]);
            acc_hi[i] += convert_int8(p_hi[i]);
            x ^= acc_lo[i] ^ acc_hi[i];
        }
#if !PLAIN_GEMM
        const int4 x4 = x.lo ^ x.hi;
        const int2 x2 = x4.lo ^ x4.hi;
        const uint y = (uint)(x2.x ^ x2.y);
        jw[s % 16] = rotate(jw[s % 16], 13u) ^ y;
#endif
    }
    if (write_acc) {
        for (int i = 0; i < 16; i++) {
            __global int *row = acc_out + (size_t)(ti * 16 + i) * n + tj * 16;
            vstore8(acc_lo[i], 0, row);
            vstore8(acc_hi[i], 1, row);
        }
    }
#if !PLAIN_GEMM
    const size_t at = ((size_t)ti * (size_t)(n / 16) + tj) * 16;
    for (int w = 0; w < 16; w++) jout[at + w] = jw[w];
    uint d[8];
    blake3_keyed_block(key, jw, d);
    if (digest_meets(d, limit)) {
        const uint slot = atomic_inc(win_count);
        if (slot < win_cap) {
            winners[slot * 10 + 0] = (uint)ti;
            winners[slot * 10 + 1] = (uint)tj;
            for (int w = 0; w < 8; w++) winners[slot * 10 + 2 + w] = d[w];
        }
    }
#endif
}
