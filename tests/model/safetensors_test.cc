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
