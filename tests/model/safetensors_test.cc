#include "dpserve/model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "test_files.h"

namespace dpserve {
namespace {

using ::testing::AllOf;
using testing::good_safetensors;
using ::testing::HasSubstr;
using testing::safetensors_bytes;
using testing::TempDir;
using testing::write_bytes;

// Returns the message of the dpserve::Error that fn throws (fails the test if none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a dpserve::Error";
  return "";
}

TEST(Safetensors, ReadsWellFormedFile) {
  TempDir dir("st_good");
  write_bytes(dir.file("model.safetensors"), good_safetensors());
  SafetensorsFile f(dir.file("model.safetensors"));
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorView& a = f.tensors().at("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(to_f32(a), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(to_f32(f.tensors().at("b")), (std::vector<float>{1, 2, 3, 4}));
}

// A header whose length is not a multiple of 8 (the format allows it) must not leave tensors
// misaligned for their dtype: the kernels and to_f32 read them as float / uint16_t in place
// (found by fuzz_safetensors: UBSan "load of misaligned address" in to_f32).
TEST(Safetensors, UnpaddedHeaderStillAlignsTensors) {
  std::string data;
  for (uint16_t v : {0x3f80, 0x4000}) {  // bf16 1, 2
    data.push_back(static_cast<char>(v & 0xff));
    data.push_back(static_cast<char>(v >> 8));
  }
  const float three = 3.0f;
  data.append(reinterpret_cast<const char*>(&three), 4);
  const nlohmann::json h = {{"b", {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {0, 4}}}},
                            {"f", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {4, 8}}}}};
  for (size_t pad = 0; pad < 8; ++pad) {
    std::string header = h.dump() + std::string(pad, ' ');
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    TempDir dir("st_unpadded");
    write_bytes(dir.file("m.safetensors"), bytes + header + data);
    SafetensorsFile f(dir.file("m.safetensors"));
    const TensorView& b = f.tensors().at("b");
    const TensorView& x = f.tensors().at("f");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % alignof(uint16_t), 0u)
        << "header " << header.size();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data) % alignof(float), 0u)
        << "header " << header.size();
    EXPECT_EQ(to_f32(b), (std::vector<float>{1, 2}));
    EXPECT_EQ(to_f32(x), (std::vector<float>{3}));
  }
}

// A tensor with a zero dimension converts to an empty vector (found by fuzz_safetensors: UBSan
// "null pointer passed as argument 1" to memcpy in to_f32; fails in the sanitizer build).
TEST(Safetensors, EmptyTensorConvertsToEmptyVector) {
  TempDir dir("st_empty");
  const nlohmann::json h = {
      {"e", {{"dtype", "F32"}, {"shape", {0, 5}}, {"data_offsets", {0, 0}}}},
      {"s", {{"dtype", "BF16"}, {"shape", {3, 0}}, {"data_offsets", {0, 0}}}}};
  write_bytes(dir.file("m.safetensors"), safetensors_bytes(h, ""));
  SafetensorsFile f(dir.file("m.safetensors"));
  EXPECT_EQ(f.tensors().at("e").nbytes, 0u);
  EXPECT_TRUE(to_f32(f.tensors().at("e")).empty());
  EXPECT_TRUE(to_f32(f.tensors().at("s")).empty());
}

// A shape whose element or byte count wraps around 64 bits used to pass with a few (or no) data
// bytes, and a dimension above INT64_MAX became negative (found by fuzz_safetensors' checks).
TEST(Safetensors, ShapeOverflowIsAnError) {
  TempDir dir("st_overflow");
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {nlohmann::json::array({uint64_t{1} << 62, 4}), "F32"},   // 2^64 elements -> 0 bytes
      {nlohmann::json::array({uint64_t{1} << 62}), "F32"},      // 2^62 elements -> 2^64 bytes
      {nlohmann::json::array({uint64_t{1} << 63, 0}), "BF16"},  // a dimension above INT64_MAX
      {nlohmann::json::array({UINT64_MAX, 0}), "F32"},
  };
  for (const auto& [shape, dtype] : cases) {
    SCOPED_TRACE(shape.dump());
    const nlohmann::json h = {
        {"w", {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {0, 0}}}}};
    write_bytes(dir.file("m.safetensors"), safetensors_bytes(h, ""));
    EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
                AllOf(HasSubstr("tensor 'w'"), HasSubstr("more elements than 64 bits")));
  }
}

TEST(Safetensors, MissingFileNamesPath) {
  EXPECT_THAT(error_of([] { SafetensorsFile f("/nonexistent/x.safetensors"); }),
              AllOf(HasSubstr("/nonexistent/x.safetensors"), HasSubstr("cannot open")));
}

TEST(Safetensors, TooShortForHeaderLength) {
  TempDir dir("st_short");
  write_bytes(dir.file("m.safetensors"), "abc");
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              AllOf(HasSubstr("m.safetensors"), HasSubstr("truncated file")));
}

TEST(Safetensors, HeaderPastEnd) {
  TempDir dir("st_hdr");
  std::string bytes = good_safetensors();
  write_bytes(dir.file("m.safetensors"), bytes.substr(0, 20));  // cut inside the header
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              AllOf(HasSubstr("m.safetensors"), HasSubstr("runs past the end")));
}

TEST(Safetensors, InvalidHeaderJson) {
  TempDir dir("st_json");
  std::string h = "{not json}     ";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(h.size());
  write_bytes(dir.file("m.safetensors"), bytes + h);
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              HasSubstr("not valid JSON"));
}

TEST(Safetensors, TruncatedDataNamesTensor) {
  TempDir dir("st_trunc");
  std::string bytes = good_safetensors();
  write_bytes(dir.file("m.safetensors"), bytes.substr(0, bytes.size() - 4));  // lose half of "b"
  EXPECT_THAT(
      error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
      AllOf(HasSubstr("m.safetensors"), HasSubstr("tensor 'b'"), HasSubstr("out of range")));
}

TEST(Safetensors, OverlappingOffsets) {
  TempDir dir("st_overlap");
  nlohmann::json h = {{"x", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                      {"y", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  write_bytes(dir.file("m.safetensors"), safetensors_bytes(h, std::string(12, '\0')));
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              AllOf(HasSubstr("'x'"), HasSubstr("'y'"), HasSubstr("overlap")));
}

TEST(Safetensors, ShapeDisagreesWithByteRange) {
  TempDir dir("st_shape");
  nlohmann::json h = {{"w", {{"dtype", "F32"}, {"shape", {3, 3}}, {"data_offsets", {0, 32}}}}};
  write_bytes(dir.file("m.safetensors"), safetensors_bytes(h, std::string(32, '\0')));
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("needs 36 bytes"), HasSubstr("span 32")));
}

TEST(Safetensors, UnsupportedDtypeNamesTensor) {
  TempDir dir("st_dtype");
  nlohmann::json h = {{"ids", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {0, 8}}}}};
  write_bytes(dir.file("m.safetensors"), safetensors_bytes(h, std::string(8, '\0')));
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir.file("m.safetensors")); }),
              AllOf(HasSubstr("tensor 'ids'"), HasSubstr("unsupported dtype 'I64'")));
}

TEST(WeightStore, MissingAndMisshapenTensors) {
  TempDir dir("ws_get");
  write_bytes(dir.file("model.safetensors"), good_safetensors());
  WeightStore ws(dir.path());
  EXPECT_TRUE(ws.has("a"));
  EXPECT_EQ(ws.get("a", {2, 3}).numel(), 6);
  EXPECT_THAT(error_of([&] { ws.get("model.norm.weight"); }),
              AllOf(HasSubstr("'model.norm.weight'"), HasSubstr("missing")));
  EXPECT_THAT(error_of([&] {
                ws.get("a", {3, 2});
              }),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("tensor 'a' has shape [2, 3]"),
                    HasSubstr("expected [3, 2]")));
}

TEST(WeightStore, EmptyDirectory) {
  TempDir dir("ws_empty");
  EXPECT_THAT(error_of([&] { WeightStore ws(dir.path()); }), HasSubstr("no model.safetensors"));
}

TEST(WeightStore, ShardedIndex) {
  TempDir dir("ws_shard");
  nlohmann::json h1 = {{"p", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  nlohmann::json h2 = {{"q", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  write_bytes(dir.file("s1.safetensors"), safetensors_bytes(h1, std::string(4, '\0')));
  write_bytes(dir.file("s2.safetensors"), safetensors_bytes(h2, std::string(4, '\0')));
  nlohmann::json idx = {{"metadata", {{"total_size", 8}}},
                        {"weight_map", {{"p", "s1.safetensors"}, {"q", "s2.safetensors"}}}};
  write_bytes(dir.file("model.safetensors.index.json"), idx.dump());
  WeightStore ws(dir.path());
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"p", "q"}));
  EXPECT_EQ(ws.total_bytes(), 8u);

  // The index names a shard that is not there.
  idx["weight_map"]["r"] = "s3.safetensors";
  write_bytes(dir.file("model.safetensors.index.json"), idx.dump());
  EXPECT_THAT(error_of([&] { WeightStore w(dir.path()); }),
              AllOf(HasSubstr("s3.safetensors"), HasSubstr("does not exist")));

  // The index puts a tensor in a shard that lacks it.
  idx["weight_map"].erase("r");
  idx["weight_map"]["q"] = "s1.safetensors";
  write_bytes(dir.file("model.safetensors.index.json"), idx.dump());
  EXPECT_THAT(error_of([&] { WeightStore w(dir.path()); }),
              AllOf(HasSubstr("tensor 'q'"), HasSubstr("does not hold it")));
}

TEST(WeightStore, LoadsRealStories260K) {
  WeightStore ws(DPSERVE_SHARED_DIR "/models/stories260K");
  const TensorView& emb = ws.get("model.embed_tokens.weight", {512, 64});
  EXPECT_EQ(emb.dtype, DType::F32);
  EXPECT_EQ(ws.get("model.layers.4.mlp.gate_proj.weight").shape, (std::vector<int64_t>{172, 64}));
  EXPECT_FALSE(ws.has("lm_head.weight"));  // tied embeddings
}

}  // namespace
}  // namespace dpserve
