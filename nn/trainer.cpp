#include "nn/trainer.h"
#include "nn/train_execution.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "kernels/ops.h"
#include "nn/distributed.h"

namespace dnns {

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

EvalStats evaluate(Model& m, BatchSource& data, float label_smoothing, std::vector<int64_t>* confusion) {
  EvalStats s;
  double loss_sum = 0;
  data.start_epoch(0, 0);
  Batch b;
  int64_t K = -1;
  while (data.next(b)) {
    if (b.size() == 0) continue;  // a shard of a global batch smaller than the ranks
    Tensor x = b.images.device() == m.device() ? b.images : b.images.to(m.device());
    Tensor y = b.labels.device() == m.device() ? b.labels : b.labels.to(m.device());
    Tensor logits = m.forward(x, false);
    int correct = 0;
    float loss = ops::softmax_cross_entropy(logits, y, label_smoothing, nullptr, &correct);
    if (confusion) {
      Tensor lc = logits.is_cpu() ? logits : logits.to(Device::CPU);  // (N, K)
      Tensor yc = b.labels.is_cpu() ? b.labels : b.labels.to(Device::CPU);  // (N)
      if (K < 0) confusion->assign(size_t(lc.dim(1)) * lc.dim(1), 0), K = lc.dim(1);
      const float* l = lc.data();
      for (int64_t r = 0; r < lc.dim(0); ++r) {
        int64_t best = 0;
        for (int64_t k = 1; k < K; ++k)
          if (l[r * K + k] > l[r * K + best]) best = k;
        const int64_t t = static_cast<int64_t>(yc[r]);
        check(t >= 0 && t < K, "evaluate: label " + std::to_string(t) + " is outside the model's " +
                                   std::to_string(K) + " classes");
        ++(*confusion)[t * K + best];
      }
    }
    loss_sum += double(loss) * b.size();
    s.correct += correct;
    s.examples += b.size();
  }
  if (data.shards() > 1) {  // (a confusion matrix stays this rank's: eval runs unsharded)
    double sums[3] = {loss_sum, double(s.correct), double(s.examples)};
    dist::allreduce_sum(sums, 3);
    loss_sum = sums[0], s.correct = static_cast<int64_t>(sums[1]), s.examples = static_cast<int64_t>(sums[2]);
  }
  if (s.examples) {
    s.loss = loss_sum / s.examples;
    s.accuracy = double(s.correct) / s.examples;
  }
  return s;
}

Trainer::Trainer(Model& model, TrainConfig cfg)
    : model_(model), cfg_(cfg), sgd_(cfg.sgd), reducer_(std::make_unique<dist::GradientReducer>(cfg.bucket_bytes)) {}

Trainer::~Trainer() = default;

namespace {

// Sets BatchNorm2d::sync_stats on every batchnorm layer for the scope (a restored model has
// new layers, so it is set at every epoch).
struct SyncBatchnorm {
  Model& m;
  SyncBatchnorm(Model& model, bool on) : m(model) { set(on); }
  ~SyncBatchnorm() { set(false); }
  void set(bool on) {
    for (Node& n : m.nodes())
      if (n.layer && n.layer->kind() == LayerKind::BatchNorm) static_cast<BatchNorm2d*>(n.layer.get())->sync_stats = on;
  }
};

// dlogits *= factor (a few hundred values: on the host).
void scale(Tensor& t, float factor) {
  Tensor host = t.is_cpu() ? t : t.to(Device::CPU);
  for (int64_t i = 0; i < host.numel(); ++i) host[i] *= factor;
  if (!t.is_cpu()) t.copy_from(host);
}

}  // namespace

EpochStats Trainer::train_epoch(BatchSource& data, const std::function<void(const StepInfo&)>& on_step,
                                int64_t stop_at) {
  const int64_t bpe = data.batches_per_epoch();
  check(bpe > 0, "trainer: the data source yields no batches");
  const int ranks = dist::size();
  check(data.shards() == ranks,
        "trainer: the training data is split into " + std::to_string(data.shards()) + " shard(s) but " +
            std::to_string(ranks) + " rank(s) train (each rank needs its own shard: LoaderOptions::shard)");
  const bool distributed = ranks > 1;
  SyncBatchnorm sync_bn(model_, distributed && cfg_.sync_batchnorm);
  plan_training_execution(model_, cfg_.train_execution);  // the masks may have changed since
  EpochStats st;
  st.epoch = step_ / bpe;
  int64_t first = step_ % bpe;
  data.start_epoch(st.epoch, first);
  auto t0 = Clock::now();
  double loss_sum = 0;
  int64_t correct_sum = 0;
  Batch b;
  Tensor dlogits;
  auto wait0 = Clock::now();
  while ((stop_at < 0 || step_ < stop_at) && data.next(b)) {
    st.data_wait_seconds += seconds_since(wait0);
    dist::fault_point(step_);
    const double comm0 = dist::comm_seconds();
    // Every rank tests the global batch, so all of them stop here together.
    check(b.global() >= ranks, [&] {
      return "trainer: global batch " + std::to_string(step_ - st.epoch * bpe) + " of epoch " +
             std::to_string(st.epoch) + " holds " + std::to_string(b.global()) + " example(s), fewer than the " +
             std::to_string(ranks) + " ranks (choose a --batch-size that leaves no such last batch)";
    });
    Tensor x = b.images.device() == model_.device() ? b.images : b.images.to(model_.device());
    Tensor y = b.labels.device() == model_.device() ? b.labels : b.labels.to(model_.device());
    Tensor logits = model_.forward(x, true);
    if (!dlogits.defined() || dlogits.shape() != logits.shape()) dlogits = Tensor::uninit(logits.shape(), model_.device());
    int correct = 0;
    float loss = ops::softmax_cross_entropy(logits, y, cfg_.label_smoothing, &dlogits, &correct);
    // The global batch's loss and accuracy: (sum of losses, correct, examples) over the ranks.
    double sums[3] = {double(loss) * b.size(), double(correct), double(b.size())};
    if (distributed) {
      dist::allreduce_sum(sums, 3);
      loss = static_cast<float>(sums[0] / sums[2]);
      correct = static_cast<int>(sums[1]);
      // The gradient of the global mean loss is the sum over ranks of (rows_r / rows) x theirs.
      scale(dlogits, static_cast<float>(double(b.size()) / sums[2]));
    }
    if (!std::isfinite(loss))
      throw Error("training diverged: loss is " + std::to_string(loss) + " at epoch " + std::to_string(st.epoch) +
                  ", step " + std::to_string(step_) + " (lower the learning rate?); the last checkpoint is intact");
    if (distributed) {
      reducer_->begin(model_);
      model_.backward(dlogits, [&](Layer& l) { reducer_->layer_done(l); });
      reducer_->finish();
    } else {
      model_.backward(dlogits);
    }
    float lr = cfg_.schedule.lr_at(step_);
    sgd_.step(model_, lr);
    ++step_;
    const int64_t examples = static_cast<int64_t>(sums[2]);
    loss_sum += double(loss) * examples;
    correct_sum += correct;
    st.examples += examples;
    ++st.steps;
    const double comm = dist::comm_seconds() - comm0;
    st.comm_seconds += comm;
    if (on_step) {
      StepInfo info;
      info.epoch = st.epoch, info.step = step_, info.batch = step_ - st.epoch * bpe, info.batches = bpe;
      info.loss = loss, info.lr = lr;
      info.epoch_loss = loss_sum / st.examples, info.epoch_accuracy = double(correct_sum) / st.examples;
      info.images_per_sec = st.examples / std::max(1e-9, seconds_since(t0));
      info.comm_seconds = comm;
      on_step(info);
    }
    wait0 = Clock::now();
  }
  if (distributed) {
    if (!cfg_.sync_batchnorm)  // each rank's running statistics saw its rows: take rank 0's
      for (auto& [name, t] : model_.state())
        if (name.find("running_") != std::string::npos) dist::broadcast(*t);
    dist::check_same(dist::fingerprint(model_), "the model state after step " + std::to_string(step_));
  }
  st.seconds = seconds_since(t0);
  if (st.examples) {
    st.loss = loss_sum / st.examples;
    st.accuracy = double(correct_sum) / st.examples;
    st.images_per_sec = st.examples / std::max(1e-9, st.seconds);
  }
  return st;
}

Archive Trainer::checkpoint() const {
  Archive a = model_.to_archive();
  a.kind = "checkpoint";
  meta_set_u64(a, "step", static_cast<uint64_t>(step_));
  sgd_.save_to(a);
  return a;
}

void Trainer::restore(const Archive& a, const std::string& where) {
  check(a.kind == "checkpoint", where + ": holds a '" + a.kind + "', not a training checkpoint");
  Archive model_part = a;
  for (auto it = model_part.tensors.begin(); it != model_part.tensors.end();)
    it = it->first.rfind("optim:", 0) == 0 ? model_part.tensors.erase(it) : std::next(it);
  Model loaded = Model::from_archive(model_part, where);
  check(loaded.spec() == model_.spec(), where + ": the checkpoint's graph differs from the model being trained");
  Device dev = model_.device();
  loaded.to(dev);
  loaded.set_fusion(model_.fusion());  // a setting of the run, not of the file: same passes as before
  std::string arch = model_.arch;
  DataInfo info = model_.data_info;  // a checkpoint of an older version holds none
  model_ = std::move(loaded);
  model_.arch = arch;
  model_.data_info = info;
  sgd_.load_from(a, model_, where);
  step_ = static_cast<int64_t>(meta_get_u64(a, "step"));
}

void Trainer::load_checkpoint(const std::string& path) { restore(load_archive(path), path); }

}  // namespace dnns
