// vrwkv train: the training loop from a configuration file (configs/*.json),
// with flags for the values one changes most. Under mpirun every process is a
// rank of one data-parallel run (docs/DISTRIBUTED.md).
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "common.hpp"
#include "mpi.hpp"
#include "signals.hpp"
#include "validators.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv::cli {

namespace {

struct Options {
  std::string config, out;
  bool resume = false, force = false, no_progress = false;
  int threads = 0;
  std::int64_t epochs = 0, batch_size = 0, train_limit = -1, val_limit = -1, stop_after = 0;
  double lr = 0;
  std::int64_t seed = -1;
  std::string train_data, val_data;
};

void train_command(const Options& opt, const CLI::App& cmd, train::Communicator* group) {
  train::TrainRun run;
  run.comm = group;
  if (opt.resume && opt.force) input_error("train: --resume and --force exclude each other");
  run.out_dir = opt.out, run.resume = opt.resume, run.force = opt.force, run.progress_bar = !opt.no_progress;
  // Ctrl-C or SIGTERM: finish the step, write a checkpoint, exit 130/143.
  set_graceful_stop(true);
  set_signal_messages(!group || group->rank() == 0);
  run.stop = &stop_signal();
  // Ranks on one machine share its cores unless told otherwise.
  run.ctx.threads = opt.threads ? opt.threads
                                : std::max(1, Context{}.resolved_threads() / (group ? ranks_on_this_machine() : 1));
  run.stop_after = opt.stop_after;
  train::TrainConfig config;
  // The configuration is read by every rank; a rank that cannot read it fails the group (rank 0 resumes from
  // its checkpoint and hands its configuration to the others).
  std::exception_ptr failure;
  try {
    if (opt.resume) {
      for (const char* o : {"--config", "--epochs", "--batch-size", "--lr", "--seed", "--train-data", "--val-data",
                            "--train-limit", "--val-limit"})
        if (cmd.count(o))
          input_error("train: ", o, " cannot be combined with --resume (the checkpoint's configuration is used)");
    } else {
      if (opt.config.empty()) input_error("train: give --config FILE.json (see configs/) or --resume");
      std::ifstream in(opt.config);
      if (!in) input_error(opt.config, ": cannot read the training configuration");
      std::stringstream text;
      text << in.rdbuf();
      config = train::train_config_from_json(text.str(), opt.config);
      if (opt.epochs) config.epochs = opt.epochs;
      if (opt.batch_size) config.batch_size = opt.batch_size;
      if (cmd.count("--lr")) config.adamw.lr = opt.lr;
      if (opt.seed >= 0) config.seed = static_cast<std::uint64_t>(opt.seed);
      if (cmd.count("--train-data")) config.train_data = opt.train_data;
      if (cmd.count("--val-data")) config.val_data = opt.val_data;
      if (opt.train_limit >= 0) config.train_limit = opt.train_limit;
      if (opt.val_limit >= 0) config.val_limit = opt.val_limit;
      if (group && config.batch_size % group->size() != 0)
        input_error(cmd.count("--batch-size") ? std::string("--batch-size") : opt.config, ": batch_size ",
                    config.batch_size, " (the global batch) does not divide over the ", group->size(),
                    " ranks of mpirun; give a multiple of ", group->size(), " or another number of ranks");
    }
  } catch (...) {
    failure = std::current_exception();
  }
  if (group) group->agree(failure);
  else if (failure) std::rethrow_exception(failure);
  train::train(config, run);
}

}  // namespace

void add_train(CLI::App& app) {
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model (checkpoints, metrics and the final model go to --out)");
  cmd->add_option("--config,-c", opt->config, "Training configuration (JSON; see configs/)");
  cmd->add_option("--out,-o", opt->out, "Output directory: checkpoint.safetensors, metrics.jsonl, model.safetensors")
      ->required();
  cmd->add_flag("--force", opt->force, "Start afresh in an OUT that holds a run, replacing it");
  cmd->add_flag("--resume", opt->resume,
                "Continue from OUT/checkpoint.safetensors with the configuration stored in it (bit-exact for the "
                "same thread count)");
  cmd->add_option("--threads,-t", opt->threads,
                  "Worker threads (default: all cores; under mpirun, the cores divided among the ranks on a machine)")->check(validators::integer_between(1, 1024));
  cmd->add_option("--epochs", opt->epochs, "Override: epochs")->check(validators::integer_between(1, 1000000));
  cmd->add_option("--batch-size", opt->batch_size, "Override: batch size")->check(validators::integer_between(1, 1 << 20));
  cmd->add_option("--lr", opt->lr, "Override: peak learning rate")->check(validators::positive());
  cmd->add_option("--seed", opt->seed, "Override: seed")->check(validators::non_negative_integer());
  cmd->add_option("--train-data", opt->train_data, "Override: training set (fashion-mnist:train, imagefolder:DIR)");
  cmd->add_option("--val-data", opt->val_data, "Override: validation set ('' for none)");
  cmd->add_option("--train-limit", opt->train_limit, "Override: use the first N training images (0: all)")
      ->check(validators::non_negative_integer());
  cmd->add_option("--val-limit", opt->val_limit, "Override: use the first N validation images (0: all)")
      ->check(validators::non_negative_integer());
  cmd->add_option("--stop-after", opt->stop_after, "Stop (with a checkpoint) after N steps in total")
      ->check(validators::positive_integer());
  cmd->add_flag("--no-progress", opt->no_progress, "Log lines instead of a progress bar on a terminal");
  cmd->callback([opt, cmd] {
    // Under mpirun: the group, and a failure seen by one rank alone (the others may wait in a collective) ends
    // the whole job; failures the ranks agreed on end every rank normally, with one message.
    std::unique_ptr<train::Communicator> group;
    if (launched_by_mpirun()) group = mpi_world();
    try {
      train_command(*opt, *cmd, group.get());
    } catch (const train::PeerFailure&) {
      throw;
    } catch (const std::exception& e) {
      if (group && group->size() > 1 && !group->failure_agreed()) {
        std::fprintf(stderr, "vrwkv: rank %d: %s\n", group->rank(), e.what());
        mpi_abort(train::exit_code_of(std::current_exception()));
      }
      throw;
    }
  });
}

}  // namespace vrwkv::cli
