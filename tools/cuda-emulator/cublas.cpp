// An emulated cuBLAS (libcublas.so) for the emulated driver: the handle calls cudarc makes and
// cublasGemmEx, column-major as cuBLAS documents it (C = α·op(A)·op(B) + β·C, op(X) = X or Xᵀ),
// with f32, f16 or bf16 operands and f32 accumulation. Device pointers are host pointers here.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kSuccess = 0, kInvalidValue = 7, kNotSupported = 15;
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
constexpr int kCompute32F = 68, kCompute32FFastTF32 = 77, kCompute32FFast16BF = 75;

float widen(const void* base, int type, std::size_t i) {
    if (type == kR32F) return static_cast<const float*>(base)[i];
    const std::uint16_t bits = static_cast<const std::uint16_t*>(base)[i];
    if (type == kR16BF) {
        const std::uint32_t u = std::uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    // IEEE half.
    const std::uint32_t sign = (bits >> 15) & 1, exponent = (bits >> 10) & 31, mantissa = bits & 1023;
    float magnitude;
    if (exponent == 0)
        magnitude = std::ldexp(float(mantissa), -24);
    else if (exponent == 31)
        magnitude = mantissa ? NAN : INFINITY;
    else
        magnitude = std::ldexp(float(mantissa | 1024), int(exponent) - 25);
    return sign ? -magnitude : magnitude;
}

bool known_type(int t) { return t == kR32F || t == kR16F || t == kR16BF; }

// op(X) as a dense row-major rows × cols f32 matrix, from column-major X with leading dimension ld.
std::vector<float> dense(const void* x, int type, bool transpose, int rows, int cols, int ld) {
    std::vector<float> out(std::size_t(rows) * cols);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const std::size_t at = transpose ? std::size_t(c) + std::size_t(r) * ld : std::size_t(r) + std::size_t(c) * ld;
            out[std::size_t(r) * cols + c] = widen(x, type, at);
        }
    return out;
}

int handle_token;

}  // namespace

extern "C" {

int cublasCreate_v2(void** handle) {
    *handle = &handle_token;
    return kSuccess;
}
int cublasDestroy_v2(void*) { return kSuccess; }
int cublasSetStream_v2(void*, void*) { return kSuccess; }
int cublasGetStream_v2(void*, void** stream) {
    *stream = nullptr;
    return kSuccess;
}
int cublasSetMathMode(void*, int) { return kSuccess; }
int cublasSetPointerMode_v2(void*, int mode) { return mode == 0 ? kSuccess : kNotSupported; }
int cublasSetWorkspace_v2(void*, void*, std::size_t) { return kSuccess; }
int cublasGetVersion_v2(void*, int* version) {
    *version = 130000;
    return kSuccess;
}

int cublasGemmEx(void*, int transa, int transb, int m, int n, int k, const void* alpha, const void* a, int a_type,
                 int lda, const void* b, int b_type, int ldb, const void* beta, void* c, int c_type, int ldc,
                 int compute_type, int) {
    if (m < 0 || n < 0 || k < 0 || transa < 0 || transa > 1 || transb < 0 || transb > 1) return kInvalidValue;
    if (!known_type(a_type) || !known_type(b_type) || c_type != kR32F) return kNotSupported;
    if (compute_type != kCompute32F && compute_type != kCompute32FFastTF32 && compute_type != kCompute32FFast16BF)
        return kNotSupported;
    // Leading dimensions as cuBLAS requires them (of the stored, not the transposed, matrix).
    if (lda < (transa ? k : m) || ldb < (transb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1)
        return kInvalidValue;
    if (m == 0 || n == 0) return kSuccess;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    const std::vector<float> op_a = dense(a, a_type, transa == 1, m, k, lda);   // m × k
    const std::vector<float> op_bt = dense(b, b_type, transb == 0, n, k, ldb);  // op(B)ᵀ: n × k
    float* out = static_cast<float*>(c);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            const float* x = &op_a[std::size_t(i) * k];
            const float* y = &op_bt[std::size_t(j) * k];
            float acc = 0.0f;
            for (int l = 0; l < k; ++l) acc = std::fma(x[l], y[l], acc);
            float& z = out[std::size_t(i) + std::size_t(j) * ldc];
            z = be == 0.0f ? al * acc : al * acc + be * z;  // β = 0: C is not read (it may be NaN)
        }
    return kSuccess;
}

}  // extern "C"
