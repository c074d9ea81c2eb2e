#include "nn/trainer.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "kernels/ops.h"

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
  if (s.examples) {
    s.loss = loss_sum / s.examples;
    s.accuracy = double(s.correct) / s.examples;
  }
  return s;
}

Trainer::Trainer(Model& model, TrainConfig cfg) : model_(model), cfg_(cfg), sgd_(cfg.sgd) {}

EpochStats Trainer::train_epoch(BatchSource& data, const std::function<void(const StepInfo&)>& on_step,
                                int64_t stop_at) {
  const int64_t bpe = data.batches_per_epoch();
  check(bpe > 0, "trainer: the data source yields no batches");
  EpochStats st;
  st.epoch = step_ / bpe;
  int64_t first = step_ % bpe;
  data.start_epoch(st.epoch, first);
  auto t0 = Clock::now();
  double loss_sum = 0;
  int64_t correct_sum = 0;
  Batch b;
  Tensor dlogits;
  while ((stop_at < 0 || step_ < stop_at) && data.next(b)) {
    Tensor x = b.images.device() == model_.device() ? b.images : b.images.to(model_.device());
    Tensor y = b.labels.device() == model_.device() ? b.labels : b.labels.to(model_.device());
    Tensor logits = model_.forward(x, true);
    if (!dlogits.defined() || dlogits.shape() != logits.shape()) dlogits = Tensor::uninit(logits.shape(), model_.device());
    int correct = 0;
    float loss = ops::softmax_cross_entropy(logits, y, cfg_.label_smoothing, &dlogits, &correct);
    if (!std::isfinite(loss))
      throw Error("training diverged: loss is " + std::to_string(loss) + " at epoch " + std::to_string(st.epoch) +
                  ", step " + std::to_string(step_) + " (lower the learning rate?); the last checkpoint is intact");
    model_.backward(dlogits);
    float lr = cfg_.schedule.lr_at(step_);
    sgd_.step(model_, lr);
    ++step_;
    loss_sum += double(loss) * b.size();
    correct_sum += correct;
    st.examples += b.size();
    if (on_step) {
      StepInfo info;
      info.epoch = st.epoch, info.step = step_, info.batch = step_ - st.epoch * bpe, info.batches = bpe;
      info.loss = loss, info.lr = lr;
      info.epoch_loss = loss_sum / st.examples, info.epoch_accuracy = double(correct_sum) / st.examples;
      info.images_per_sec = st.examples / std::max(1e-9, seconds_since(t0));
      on_step(info);
    }
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
