// Loading problems surface as dpserve::Error naming what is wrong: a tensor whose shape differs
// from what config.json implies, a missing tensor, an unsupported architecture.

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/model/models/llama.h"

namespace dpserve {
namespace {

namespace fs = std::filesystem;

const std::string kModelDir = std::string(DPSERVE_SHARED_DIR) + "/models/stories260K";

// A temporary model dir: stories260K's weights (symlinked) with an edited config.json.
class EditedModel {
 public:
  explicit EditedModel(const std::string& tag, const std::function<void(nlohmann::json&)>& edit)
      : dir_(fs::temp_directory_path() /
             ("dpserve_load_" + tag + "_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
    std::ifstream in(kModelDir + "/config.json");
    nlohmann::json cfg = nlohmann::json::parse(in);
    edit(cfg);
    std::ofstream(dir_ / "config.json") << cfg.dump(2);
    fs::create_symlink(fs::absolute(kModelDir + "/model.safetensors"), dir_ / "model.safetensors");
  }
  ~EditedModel() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }

 private:
  fs::path dir_;
};

std::string load_error(const std::string& dir) {
  ModelOptions opt;
  opt.show_progress = false;
  try {
    load_model(dir, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(LoadErrors, ShapeMismatchNamesTheTensor) {
  EditedModel m("shape", [](nlohmann::json& c) { c["intermediate_size"] = 100; });
  const std::string err = load_error(m.dir());
  EXPECT_NE(err.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << err;
}

TEST(LoadErrors, MissingTensorNamesIt) {
  // Qwen2 implies q/k/v biases, which a Llama checkpoint lacks.
  EditedModel m("missing", [](nlohmann::json& c) {
    c["architectures"] = {"Qwen2ForCausalLM"};
    c["model_type"] = "qwen2";
  });
  const std::string err = load_error(m.dir());
  EXPECT_NE(err.find("model.layers.0.self_attn.q_proj.bias"), std::string::npos) << err;
}

TEST(LoadErrors, UntiedWithoutLmHead) {
  EditedModel m("untied", [](nlohmann::json& c) { c["tie_word_embeddings"] = false; });
  const std::string err = load_error(m.dir());
  EXPECT_NE(err.find("lm_head.weight"), std::string::npos) << err;
}

TEST(LoadErrors, UnsupportedArchitecture) {
  EditedModel m("arch", [](nlohmann::json& c) { c["architectures"] = {"GPT2LMHeadModel"}; });
  const std::string err = load_error(m.dir());
  EXPECT_NE(err.find("GPT2LMHeadModel"), std::string::npos) << err;
}

}  // namespace
}  // namespace dpserve
