// Fuzz target: the safetensors reader (model/safetensors.h) on arbitrary file contents. Each
// input is written to an in-memory file (memfd) and opened through /proc/self/fd like a
// checkpoint on disk.
//
// Properties: a malformed file is a dpserve::Error, never a crash, UB, hang or huge allocation;
// for an accepted file every tensor has non-negative dimensions whose product times the dtype
// size equals nbytes without overflowing, and its bytes lie inside the file's data section (they
// are read, and converted with to_f32 when small).

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dpserve/common/errors.h"
#include "dpserve/model/safetensors.h"
#include "fuzz_common.h"

namespace dpserve {
namespace {

// A memfd holding `size` bytes of `data`, closed on destruction.
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    FUZZ_CHECK(fd_ >= 0, "memfd_create failed");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      FUZZ_CHECK(n > 0, "write to memfd failed");
      done += static_cast<size_t>(n);
    }
  }
  ~MemFile() { ::close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_ = -1;
};

void check_tensor(const TensorView& t) {
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    FUZZ_CHECK(d >= 0, "tensor '{}' has dimension {}", t.name, d);
    FUZZ_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel),
               "tensor '{}': element count overflows", t.name);
  }
  uint64_t nbytes = 0;
  FUZZ_CHECK(!__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes),
             "tensor '{}': byte count overflows", t.name);
  FUZZ_CHECK(nbytes == t.nbytes, "tensor '{}': {} elements but nbytes {}", t.name, numel, t.nbytes);
  FUZZ_CHECK(t.numel() == static_cast<int64_t>(numel), "numel() disagrees");
  const auto* p = static_cast<const uint8_t*>(t.data);
  unsigned sum = 0;
  for (size_t i = 0; i < t.nbytes; ++i) sum += p[i];  // faults if outside the mapping
  if (t.nbytes <= (size_t{1} << 20)) {
    const std::vector<float> f = to_f32(t);
    FUZZ_CHECK(f.size() == numel, "to_f32 gave {} values for {}", f.size(), numel);
  }
  (void)sum;
}

}  // namespace
}  // namespace dpserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const dpserve::MemFile file(data, size);
  try {
    const dpserve::SafetensorsFile st(file.path());
    std::vector<std::pair<const uint8_t*, const uint8_t*>> spans;
    size_t total = 0;
    for (const auto& [name, t] : st.tensors()) {
      FUZZ_CHECK(name == t.name, "tensor keyed '{}' is named '{}'", name, t.name);
      dpserve::check_tensor(t);
      const auto* p = static_cast<const uint8_t*>(t.data);
      if (t.nbytes > 0) spans.emplace_back(p, p + t.nbytes);
      total += t.nbytes;
    }
    // Tensors never share bytes, and all of them fit in the file after its 8-byte length.
    FUZZ_CHECK(size >= 8 && total <= size - 8, "{} tensor bytes in a {}-byte file", total, size);
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) {
      FUZZ_CHECK(spans[i].first >= spans[i - 1].second, "two tensors overlap");
    }
  } catch (const dpserve::Error&) {
  }
  return 0;
}
