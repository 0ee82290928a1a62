// Data-parallel training: what the training loop needs of a group of
// processes (docs/DISTRIBUTED.md). The library holds only this interface and
// the one-process group; the command-line program implements it over MPI
// (src/cli/mpi.cpp), so that the library links no MPI.
//
// Every call is collective: all ranks make it, in the same order, from the
// thread that runs train(). Results are the same on every rank, bit for bit.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

namespace vrwkv::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data[0..n) ← the sum over ranks of data[0..n), in place.
  virtual void allreduce_sum(float* data, std::int64_t n) = 0;
  // all[r·n .. (r+1)·n) ← rank r's mine[0..n), on every rank.
  virtual void allgather(const double* mine, std::int64_t n, double* all) = 0;
  // Rank r's slice data[offsets[r] .. offsets[r+1]) to every rank, in place (offsets: size() + 1 values).
  virtual void allgatherv(float* data, const std::vector<std::int64_t>& offsets) = 0;
  // Each rank's slice [offsets[r], offsets[r+1]) of rank 0's full into mine (offsets[r+1] − offsets[r] floats).
  virtual void scatterv(const float* full, float* mine, const std::vector<std::int64_t>& offsets) = 0;
  // Rank 0's bytes to every rank.
  virtual void broadcast(void* data, std::int64_t bytes) = 0;
  // Rank `from`'s mine[0..n) into rank 0's into[0..n) (the other ranks pass through): rank 0 collects slices
  // one at a time, so that it never holds them all.
  virtual void send_to_lead(int from, const float* mine, float* into, std::int64_t n) = 0;

  // Every rank waits for all the others.
  virtual void barrier() = 0;

  // The ranks compare outcomes of a phase in which any of them may have failed (`failure`: this rank's
  // exception, or null). When none failed it returns. Otherwise it throws on every rank: one process alone
  // rethrows its exception; in a group the lowest failing rank prints it on stderr before any rank goes on, and
  // every rank throws PeerFailure with that exception's exit code, so that one message is printed and every
  // rank exits with the same code, without a hang.
  void agree(std::exception_ptr failure);
  // True once agree() has thrown: every rank knows of the failure and can end normally (no abort needed).
  bool failure_agreed() const { return failure_agreed_; }

 protected:
  // Called on every rank of a group once a failure is agreed, before the ranks part (a launcher may then stop
  // the ranks still running: the MPI group silences its signal messages here).
  virtual void parting() {}

 private:
  bool failure_agreed_ = false;
};

// Thrown by agree() on every rank of a group once a rank's failure has been reported (on stderr, as
// "vrwkv: MESSAGE", or "vrwkv: rank R: MESSAGE" for a rank other than 0).
class PeerFailure : public std::exception {
 public:
  PeerFailure(int failed_rank, int exit_code) : rank_(failed_rank), code_(exit_code) {}
  const char* what() const noexcept override { return "a rank failed (its message is above)"; }
  int failed_rank() const { return rank_; }
  int exit_code() const { return code_; }

 private:
  int rank_, code_;
};

// The exit code a command gives for an exception: 2 for Error(Input), 1 for any other.
int exit_code_of(std::exception_ptr e);

// One process: every collective is the identity.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, std::int64_t) override {}
  void allgather(const double* mine, std::int64_t n, double* all) override;
  void allgatherv(float*, const std::vector<std::int64_t>&) override {}
  void scatterv(const float* full, float* mine, const std::vector<std::int64_t>& offsets) override;
  void broadcast(void*, std::int64_t) override {}
  void send_to_lead(int from, const float* mine, float* into, std::int64_t n) override;
  void barrier() override {}
};

// Slice boundaries of n elements over `ranks` (size ranks + 1): rank r owns [n·r/ranks, n·(r+1)/ranks).
std::vector<std::int64_t> even_slices(std::int64_t n, int ranks);

}  // namespace vrwkv::train
