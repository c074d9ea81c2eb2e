#include "prune/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/json.h"

namespace dnns {

// ---------------------------------------------------------------- level records

std::string level_record_json(const LevelRecord& r) {
  return Json()
             .add("chain", r.chain)
             .add("level", r.level)
             .add("remaining", r.remaining)
             .add("total", r.total)
             .add("density", r.density())
             .add("test_accuracy", r.test_accuracy)
             .add("test_loss", r.test_loss)
             .add("test_examples", r.test_examples)
             .add("train_accuracy", r.train_accuracy)
             .add("train_loss", r.train_loss)
             .add("steps", r.steps)
             .add("train_seconds", r.train_seconds)
             .add("wall_seconds", r.wall_seconds)
             .add("resumed", r.resumed)
             .str() +
         "\n";
}

namespace {

double to_number(const std::map<std::string, std::string>& m, const std::string& key, const std::string& where) {
  auto it = m.find(key);
  check(it != m.end(), where + ": missing key '" + key + "'");
  if (it->second == "null") return std::numeric_limits<double>::quiet_NaN();
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  check(end && *end == '\0' && !it->second.empty(), where + ": key '" + key + "' is not a number ('" + it->second + "')");
  return v;
}

int64_t to_integer(const std::map<std::string, std::string>& m, const std::string& key, const std::string& where) {
  auto it = m.find(key);
  check(it != m.end(), where + ": missing key '" + key + "'");
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  check(end && *end == '\0' && !it->second.empty(), where + ": key '" + key + "' is not an integer ('" + it->second + "')");
  return v;
}

}  // namespace

LevelRecord parse_level_record(const std::string& json, const std::string& where) {
  auto m = parse_flat_json(json, where);
  LevelRecord r;
  auto chain = m.find("chain");
  check(chain != m.end(), where + ": missing key 'chain'");
  r.chain = chain->second;
  r.level = static_cast<int>(to_integer(m, "level", where));
  r.remaining = to_integer(m, "remaining", where);
  r.total = to_integer(m, "total", where);
  r.test_accuracy = to_number(m, "test_accuracy", where);
  r.test_loss = to_number(m, "test_loss", where);
  r.test_examples = to_integer(m, "test_examples", where);
  r.train_accuracy = to_number(m, "train_accuracy", where);
  r.train_loss = to_number(m, "train_loss", where);
  r.steps = to_integer(m, "steps", where);
  r.train_seconds = to_number(m, "train_seconds", where);
  r.wall_seconds = to_number(m, "wall_seconds", where);
  auto resumed = m.find("resumed");
  r.resumed = resumed != m.end() && resumed->second == "true";
  return r;
}

// ---------------------------------------------------------------- tables

static std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string levels_csv(const std::vector<LevelRecord>& records) {
  std::ostringstream os;
  os << "chain,level,remaining,total,percent_remaining,test_accuracy,test_loss,test_examples,train_accuracy,"
        "train_loss,steps,train_seconds,wall_seconds\n";
  for (const LevelRecord& r : records)
    os << r.chain << ',' << r.level << ',' << r.remaining << ',' << r.total << ',' << json_number(100.0 * r.density())
       << ',' << json_number(r.test_accuracy) << ',' << json_number(r.test_loss) << ',' << r.test_examples << ','
       << json_number(r.train_accuracy) << ',' << json_number(r.train_loss) << ',' << r.steps << ','
       << json_number(r.train_seconds) << ',' << json_number(r.wall_seconds) << '\n';
  return os.str();
}

std::string levels_markdown(const std::vector<LevelRecord>& records) {
  std::map<int, const LevelRecord*> mag, rnd;
  for (const LevelRecord& r : records) (r.chain == "random" ? rnd : mag)[r.level] = &r;
  std::map<int, bool> levels;
  for (const LevelRecord& r : records) levels[r.level] = true;
  const bool with_random = !rnd.empty();
  std::ostringstream os;
  os << "| level | weights remaining | % remaining | test acc (magnitude) |";
  if (with_random) os << " test acc (random) |";
  os << " train time (magnitude) |\n";
  os << "|---:|---:|---:|---:|";
  if (with_random) os << "---:|";
  os << "---:|\n";
  for (const auto& [level, unused] : levels) {
    const LevelRecord* m = mag.count(level) ? mag[level] : nullptr;
    const LevelRecord* r = rnd.count(level) ? rnd[level] : nullptr;
    const LevelRecord* any = m ? m : r;
    os << "| " << level << " | " << any->remaining << " / " << any->total << " | "
       << fmt("%.2f", 100.0 * any->density()) << " | " << (m ? fmt("%.2f%%", 100.0 * m->test_accuracy) : "-") << " |";
    if (with_random) {
      if (level == 0 && !r && m) os << " (dense: " << fmt("%.2f%%", 100.0 * m->test_accuracy) << ") |";
      else os << " " << (r ? fmt("%.2f%%", 100.0 * r->test_accuracy) : "-") << " |";
    }
    os << " " << (m ? fmt("%.1f s", m->train_seconds) : "-") << " |\n";
  }
  return os.str();
}

// ---------------------------------------------------------------- SVG

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// 1, 2 or 5 times a power of ten, near `rough`.
double nice_step(double rough) {
  double p = std::pow(10.0, std::floor(std::log10(rough)));
  double m = rough / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

std::string tick_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", std::fabs(v) < 1e-12 ? 0.0 : v);
  return b;
}

}  // namespace

std::string render_line_plot_svg(const LinePlot& plot) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const PlotSeries& s : plot.series)
    for (const PlotPoint& p : s.points) {
      check(std::isfinite(p.x) && std::isfinite(p.y), "plot '" + plot.title + "': series '" + s.name +
                                                          "' has a non-finite point");
      check(!plot.log_x || p.x > 0, "plot '" + plot.title + "': log x axis needs x > 0, series '" + s.name +
                                        "' has x = " + tick_text(p.x));
      xmin = std::min(xmin, p.x), xmax = std::max(xmax, p.x);
      ymin = std::min(ymin, p.y), ymax = std::max(ymax, p.y);
    }
  check(std::isfinite(xmin), "plot '" + plot.title + "': nothing to plot");

  const double W = 780, H = 480, left = 72, right = 230, top = 48, bottom = 62;
  const double pw = W - left - right, ph = H - top - bottom;

  // x axis: data range in axis units (log10 when log_x), padded so end points sit inside.
  auto tx = [&](double x) { return plot.log_x ? std::log10(x) : x; };
  double a0 = tx(xmin), a1 = tx(xmax);
  double span = a1 - a0;
  if (span <= 0) span = plot.log_x ? 0.2 : std::max(1.0, std::fabs(a0) * 0.2);
  a0 -= 0.06 * span, a1 += 0.06 * span;
  auto px = [&](double x) {
    double f = (tx(x) - a0) / (a1 - a0);
    return left + (plot.reverse_x ? 1.0 - f : f) * pw;
  };
  std::vector<double> xticks;
  if (plot.log_x) {
    for (const std::vector<double>& mult : {std::vector<double>{1, 2, 5}, std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}}) {
      xticks.clear();
      for (int e = static_cast<int>(std::floor(a0)) - 1; e <= static_cast<int>(std::ceil(a1)) + 1; ++e)
        for (double m : mult) {
          double v = m * std::pow(10.0, e);
          if (std::log10(v) >= a0 && std::log10(v) <= a1) xticks.push_back(v);
        }
      if (xticks.size() >= 3) break;
    }
  } else {
    double step = nice_step((a1 - a0) / 6);
    for (double v = std::ceil(a0 / step) * step; v <= a1 + 1e-9 * step; v += step) xticks.push_back(v);
  }

  // y axis: nice ticks, with room above the highest point for its label.
  if (ymax - ymin < 1e-9) ymin -= 1, ymax += 1;
  double ystep = nice_step((ymax - ymin) / 5);
  double y0 = std::floor(ymin / ystep) * ystep, y1 = std::ceil(ymax / ystep) * ystep;
  if (y1 - ymax < 0.5 * ystep) y1 += ystep;
  if (ymin - y0 < 0.5 * ystep) y0 -= ystep;
  auto py = [&](double y) { return top + (1.0 - (y - y0) / (y1 - y0)) * ph; };

  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
     << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"white\"/>\n"
     << "<text x=\"" << left + pw / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">"
     << xml_escape(plot.title) << "</text>\n";
  // Grid and ticks.
  os << "<g stroke=\"#dddddd\" stroke-width=\"1\">\n";
  for (double v : xticks) os << "<line x1=\"" << px(v) << "\" y1=\"" << top << "\" x2=\"" << px(v) << "\" y2=\"" << top + ph << "\"/>\n";
  for (double v = y0; v <= y1 + 1e-9 * ystep; v += ystep)
    os << "<line x1=\"" << left << "\" y1=\"" << py(v) << "\" x2=\"" << left + pw << "\" y2=\"" << py(v) << "\"/>\n";
  os << "</g>\n";
  os << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
     << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (double v : xticks)
    os << "<line x1=\"" << px(v) << "\" y1=\"" << top + ph << "\" x2=\"" << px(v) << "\" y2=\"" << top + ph + 5
       << "\" stroke=\"black\"/><text x=\"" << px(v) << "\" y=\"" << top + ph + 19 << "\" text-anchor=\"middle\">"
       << tick_text(v) << "</text>\n";
  for (double v = y0; v <= y1 + 1e-9 * ystep; v += ystep)
    os << "<line x1=\"" << left - 5 << "\" y1=\"" << py(v) << "\" x2=\"" << left << "\" y2=\"" << py(v)
       << "\" stroke=\"black\"/><text x=\"" << left - 8 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">"
       << tick_text(v) << "</text>\n";
  os << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 16 << "\" text-anchor=\"middle\">" << xml_escape(plot.x_label)
     << "</text>\n";
  os << "<text transform=\"translate(20 " << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
     << xml_escape(plot.y_label) << "</text>\n";

  // Series: line, markers, labels (above for the first series, below for the next, so the
  // labels of two chains at one x do not sit on each other).
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const PlotSeries& s = plot.series[k];
    os << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">\n";
    if (s.points.size() > 1) {
      os << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"2\""
         << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
      for (size_t i = 0; i < s.points.size(); ++i) os << (i ? " " : "") << px(s.points[i].x) << "," << py(s.points[i].y);
      os << "\"/>\n";
    }
    for (const PlotPoint& p : s.points) {
      os << "<circle cx=\"" << px(p.x) << "\" cy=\"" << py(p.y) << "\" r=\"3.5\" fill=\"" << s.color << "\"/>\n";
      if (!p.label.empty())
        os << "<text x=\"" << px(p.x) << "\" y=\"" << py(p.y) + (k % 2 == 0 ? -8 : 17)
           << "\" text-anchor=\"middle\" font-size=\"10\" fill=\"" << s.color << "\">" << xml_escape(p.label)
           << "</text>\n";
    }
    os << "</g>\n";
  }
  // Legend.
  double lx = left + pw + 16, ly = top + 10;
  for (const PlotSeries& s : plot.series) {
    os << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 26 << "\" y2=\"" << ly << "\" stroke=\""
       << s.color << "\" stroke-width=\"2\"" << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/><circle cx=\""
       << lx + 13 << "\" cy=\"" << ly << "\" r=\"3.5\" fill=\"" << s.color << "\"/><text x=\"" << lx + 32
       << "\" y=\"" << ly + 4 << "\">" << xml_escape(s.name) << "</text>\n";
    ly += 20;
  }
  os << "</svg>\n";
  return os.str();
}

std::string render_heatmap_svg(const HeatMap& map) {
  const size_t R = map.row_labels.size(), C = map.col_labels.size();
  check(R > 0 && C > 0, "heat map '" + map.title + "': nothing to draw");
  check(map.shade.size() == R * C, "heat map '" + map.title + "': " + std::to_string(map.shade.size()) +
                                       " shades for " + std::to_string(R) + " x " + std::to_string(C) + " cells");
  check(map.text.empty() || map.text.size() == R * C, "heat map '" + map.title + "': text needs one entry per cell");
  for (double v : map.shade)
    check(v >= 0 && v <= 1, "heat map '" + map.title + "': shade " + tick_text(v) + " is outside [0, 1]");
  size_t longest = 1;
  for (const std::string& l : map.row_labels) longest = std::max(longest, l.size());
  for (const std::string& l : map.col_labels) longest = std::max(longest, l.size());
  const double cell = std::clamp(560.0 / double(std::max(R, C)), 6.0, 48.0);
  const double label_w = 12 + 6.5 * double(std::min<size_t>(longest, 24));  // room for the labels
  const double left = 36 + label_w, top = 48 + label_w, bar_w = 16, right = 90;
  const double W = left + cell * C + right, H = top + cell * R + 50;
  const bool show_text = !map.text.empty() && cell >= 14;
  const double fs = std::min(12.0, std::max(6.0, cell * 0.6));  // label font size
  // White -> #08306b (dark blue), linearly per channel.
  auto colour = [](double v) {
    char buf[8];
    auto mix = [&](int a, int b) { return static_cast<int>(std::lround(a + (b - a) * v)); };
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", mix(255, 8), mix(255, 48), mix(255, 107));
    return std::string(buf);
  };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" font-family=\"sans-serif\" font-size=\"" << fs << "\">\n"
     << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"white\"/>\n"
     << "<text x=\"" << left + cell * C / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">"
     << xml_escape(map.title) << "</text>\n";
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) {
      const double v = map.shade[r * C + c], x = left + cell * c, y = top + cell * r;
      os << "<rect class=\"cell\" x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell << "\" height=\"" << cell
         << "\" fill=\"" << colour(v) << "\"/>\n";
      if (show_text && !map.text[r * C + c].empty())
        os << "<text x=\"" << x + cell / 2 << "\" y=\"" << y + cell / 2 + fs / 3 << "\" text-anchor=\"middle\" fill=\""
           << (v > 0.5 ? "white" : "black") << "\">" << xml_escape(map.text[r * C + c]) << "</text>\n";
    }
  os << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << cell * C << "\" height=\"" << cell * R
     << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (size_t r = 0; r < R; ++r)
    os << "<text x=\"" << left - 6 << "\" y=\"" << top + cell * r + cell / 2 + fs / 3 << "\" text-anchor=\"end\">"
       << xml_escape(map.row_labels[r]) << "</text>\n";
  for (size_t c = 0; c < C; ++c)
    os << "<text transform=\"translate(" << left + cell * c + cell / 2 + fs / 3 << " " << top - 6
       << ") rotate(-90)\" text-anchor=\"start\">" << xml_escape(map.col_labels[c]) << "</text>\n";
  os << "<text x=\"" << left + cell * C / 2 << "\" y=\"" << H - 16 << "\" text-anchor=\"middle\" font-size=\"12\">"
     << xml_escape(map.x_label) << "</text>\n";
  os << "<text transform=\"translate(18 " << top + cell * R / 2 << ") rotate(-90)\" text-anchor=\"middle\" "
     << "font-size=\"12\">" << xml_escape(map.y_label) << "</text>\n";
  // Colour bar: 0 at the bottom, 1 at the top, in ten steps.
  const double bx = left + cell * C + 20, bh = std::min(200.0, cell * R);
  for (int i = 0; i < 10; ++i)
    os << "<rect x=\"" << bx << "\" y=\"" << top + bh * (9 - i) / 10 << "\" width=\"" << bar_w << "\" height=\""
       << bh / 10 << "\" fill=\"" << colour((i + 0.5) / 10) << "\"/>\n";
  os << "<rect x=\"" << bx << "\" y=\"" << top << "\" width=\"" << bar_w << "\" height=\"" << bh
     << "\" fill=\"none\" stroke=\"black\"/>\n"
     << "<text x=\"" << bx + bar_w + 4 << "\" y=\"" << top + 4 << "\" font-size=\"10\">1</text>\n"
     << "<text x=\"" << bx + bar_w + 4 << "\" y=\"" << top + bh + 4 << "\" font-size=\"10\">0</text>\n";
  os << "</svg>\n";
  return os.str();
}

std::string accuracy_vs_sparsity_svg(const std::vector<LevelRecord>& records, const std::string& title) {
  std::map<int, const LevelRecord*> mag, rnd;
  for (const LevelRecord& r : records) (r.chain == "random" ? rnd : mag)[r.level] = &r;
  auto point = [](const LevelRecord& r) {
    return PlotPoint{100.0 * r.density(), 100.0 * r.test_accuracy, fmt("%.1f", 100.0 * r.test_accuracy)};
  };
  LinePlot plot;
  plot.title = title;
  plot.x_label = "weights remaining (%, log scale)";
  plot.y_label = "test accuracy (%)";
  plot.log_x = true;
  plot.reverse_x = true;
  PlotSeries m{"magnitude (IMP, rewind)", "#1f77b4", false, {}};
  for (const auto& [level, r] : mag) m.points.push_back(point(*r));
  if (!m.points.empty()) plot.series.push_back(m);
  if (!rnd.empty()) {
    PlotSeries s{"random (same layer counts)", "#d62728", true, {}};
    if (!rnd.count(0) && mag.count(0)) {  // both chains start from the dense network
      PlotPoint p = point(*mag[0]);
      p.label.clear();  // already labelled on the magnitude line
      s.points.push_back(p);
    }
    for (const auto& [level, r] : rnd) s.points.push_back(point(*r));
    plot.series.push_back(s);
  }
  return render_line_plot_svg(plot);
}

}  // namespace dnns
