#pragma once
// A terminal progress bar for long work (model loading, benchmarks); silent unless stderr is a tty.

#include <cstdint>
#include <string>

namespace dpserve {

class ProgressBar {
 public:
  // label: what is progressing; total: units of work (e.g. bytes or tensors).
  ProgressBar(std::string label, int64_t total);
  ~ProgressBar();
  // Advances by `n` units and redraws at most a few times per second.
  void advance(int64_t n);
  // Draws the final state and ends the line.
  void finish();

 private:
  void draw(bool force);

  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
  int64_t last_draw_ms_ = 0;
};

}  // namespace dpserve
