// Results of IMP levels and the reports made from them: levels.csv, a Markdown table and an
// SVG plot of test accuracy against the share of weights remaining, one line per chain
// (magnitude pruning, and the random-pruning baseline when it was run).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/json.h"  // parse_flat_json, which the level records are read with

namespace dnns {

// One trained level of one chain, as stored in its metrics.json.
struct LevelRecord {
  std::string chain = "magnitude";  // "magnitude" or "random"
  int level = 0;                    // 0 = the dense network (shared by both chains)
  int64_t remaining = 0, total = 0; // unpruned / all prunable (conv and linear) weights
  double test_accuracy = 0, test_loss = 0;
  int64_t test_examples = 0;
  double train_accuracy = 0, train_loss = 0;  // last epoch, running mean over the epoch
  int64_t steps = 0;                          // the trainer's step at the end (the schedule's length)
  double train_seconds = 0;  // summed training time of every epoch in the level's log (all sessions)
  double wall_seconds = 0;   // wall time of the session that finished the level
  bool resumed = false;      // the level was continued from a checkpoint
  double density() const { return total ? double(remaining) / total : 1.0; }
};

std::string level_record_json(const LevelRecord& r);  // one JSON object and a newline
// Reads what level_record_json wrote; throws Error naming `where` when a key is missing or
// malformed.
LevelRecord parse_level_record(const std::string& json, const std::string& where);


// levels.csv: chain,level,remaining,total,percent_remaining,test_accuracy,test_loss,... one
// row per record, in the given order.
std::string levels_csv(const std::vector<LevelRecord>& records);

// A Markdown table, one row per level: level, weights remaining (count and %), test accuracy
// of the magnitude chain and, when present, of the random chain, and training time. Level 0
// is the dense network, shared by both chains.
std::string levels_markdown(const std::vector<LevelRecord>& records);

// ---- SVG line plots --------------------------------------------------------------------

struct PlotPoint {
  double x = 0, y = 0;
  std::string label;  // drawn beside the point ("" = none)
};
struct PlotSeries {
  std::string name;   // legend entry
  std::string color;  // any SVG colour ("#1f77b4")
  bool dashed = false;
  std::vector<PlotPoint> points;  // joined in this order
};
struct LinePlot {
  std::string title, x_label, y_label;
  bool log_x = false;      // logarithmic x axis (x must be > 0)
  bool reverse_x = false;  // x decreasing to the right
  std::vector<PlotSeries> series;
};
// A standalone SVG document: axes with ticks and grid lines, one polyline with markers per
// series, point labels, a legend. Throws Error when there is nothing to plot or log_x meets
// an x <= 0.
std::string render_line_plot_svg(const LinePlot& plot);

// ---- SVG heat maps (a confusion matrix) -------------------------------------------------

struct HeatMap {
  std::string title, x_label, y_label;         // x: columns, y: rows
  std::vector<std::string> row_labels, col_labels;  // (R), (C)
  std::vector<double> shade;      // (R, C) row-major, in [0, 1]: white (0) to dark blue (1)
  std::vector<std::string> text;  // (R, C) drawn in each cell, or empty for none
};
// A standalone SVG document: one square cell per value, row labels at the left, column labels
// (rotated) on top, a colour bar. Cells shrink with many classes (100 classes: 6 px cells; the
// cell text is left out below 14 px). Throws Error on mismatched sizes or a shade outside
// [0, 1] (NaN included).
std::string render_heatmap_svg(const HeatMap& map);

// Test accuracy (%) against weights remaining (%, log scale, 100% at the left), one line per
// chain; the random chain starts from the shared dense level 0.
std::string accuracy_vs_sparsity_svg(const std::vector<LevelRecord>& records, const std::string& title);

// s with &, <, > and " as XML entities (SVG text).
std::string xml_escape(const std::string& s);

}  // namespace dnns
