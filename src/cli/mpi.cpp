#include "mpi.hpp"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>

#include "signals.hpp"
#include "vrwkv/error.hpp"

#ifdef VRWKV_WITH_MPI
#include <mpi.h>
#endif

namespace vrwkv::cli {

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK"); }

int launcher_rank() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (!rank) rank = std::getenv("PMIX_RANK");
  return rank ? std::atoi(rank) : 0;
}

int ranks_on_this_machine() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int n = local ? std::atoi(local) : 1;
  return std::max(n, 1);
}

#ifdef VRWKV_WITH_MPI

namespace {

// MPI counts are int: a long buffer goes in pieces of at most 2^30 elements.
constexpr std::int64_t kPiece = std::int64_t{1} << 30;
constexpr int kSliceTag = 17;  // send_to_lead's messages

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  runtime_error("MPI: ", call, " failed (", std::string(text, static_cast<std::size_t>(len)), ")");
}

int as_int(std::int64_t n, const char* what) {
  if (n < 0 || n > std::numeric_limits<int>::max()) runtime_error("MPI: ", what, " of ", n, " elements is too long");
  return static_cast<int>(n);
}

class MpiCommunicator final : public train::Communicator {
 public:
  MpiCommunicator() {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    // Errors come back as codes (and become exceptions) instead of ending the job from inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiCommunicator() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(float* data, std::int64_t n) override {
    for (std::int64_t at = 0; at < n; at += kPiece)
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, static_cast<int>(std::min(kPiece, n - at)), MPI_FLOAT, MPI_SUM,
                          MPI_COMM_WORLD),
            "MPI_Allreduce");
  }
  void allgather(const double* mine, std::int64_t n, double* all) override {
    check(MPI_Allgather(mine, as_int(n, "allgather"), MPI_DOUBLE, all, static_cast<int>(n), MPI_DOUBLE,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void allgatherv(float* data, const std::vector<std::int64_t>& offsets) override {
    std::vector<int> counts, displs;
    slices(offsets, counts, displs);
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(), MPI_FLOAT,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv");
  }
  void scatterv(const float* full, float* mine, const std::vector<std::int64_t>& offsets) override {
    std::vector<int> counts, displs;
    slices(offsets, counts, displs);
    check(MPI_Scatterv(full, counts.data(), displs.data(), MPI_FLOAT, mine, counts[rank_], MPI_FLOAT, 0,
                       MPI_COMM_WORLD),
          "MPI_Scatterv");
  }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  void send_to_lead(int from, const float* mine, float* into, std::int64_t n) override {
    if (from == 0) {
      if (rank_ == 0) std::copy(mine, mine + n, into);
      return;
    }
    for (std::int64_t at = 0; at < n; at += kPiece) {
      const int count = static_cast<int>(std::min(kPiece, n - at));
      if (rank_ == from)
        check(MPI_Send(mine + at, count, MPI_FLOAT, 0, kSliceTag, MPI_COMM_WORLD), "MPI_Send");
      else if (rank_ == 0)
        check(MPI_Recv(into + at, count, MPI_FLOAT, from, kSliceTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
    }
  }

 protected:
  // mpirun stops the other ranks with SIGTERM as soon as one exits non-zero: that is no stop to announce.
  void parting() override { set_signal_messages(false); }

 public:
  void broadcast(void* data, std::int64_t bytes) override {
    char* p = static_cast<char*>(data);
    for (std::int64_t at = 0; at < bytes; at += kPiece)
      check(MPI_Bcast(p + at, static_cast<int>(std::min(kPiece, bytes - at)), MPI_BYTE, 0, MPI_COMM_WORLD),
            "MPI_Bcast");
  }

 private:
  // The v-collectives take int counts and displacements: a slice layout beyond 2^31 elements is refused.
  void slices(const std::vector<std::int64_t>& offsets, std::vector<int>& counts, std::vector<int>& displs) const {
    if (static_cast<int>(offsets.size()) != size_ + 1) runtime_error("MPI: ", offsets.size() - 1, " slices for ", size_, " ranks");
    counts.resize(size_), displs.resize(size_);
    for (int r = 0; r < size_; ++r) {
      counts[r] = as_int(offsets[r + 1] - offsets[r], "a slice");
      displs[r] = as_int(offsets[r], "a slice offset");
    }
  }
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<train::Communicator> mpi_world() { return std::make_unique<MpiCommunicator>(); }

void mpi_abort(int code) {
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  if (up && !down) MPI_Abort(MPI_COMM_WORLD, code);
}

#else

std::unique_ptr<train::Communicator> mpi_world() {
  input_error("this vrwkv was built without MPI, so it cannot train under mpirun (install libopenmpi-dev, as ",
              "tools/setup.sh does, and build again)");
}

void mpi_abort(int) {}

#endif

}  // namespace vrwkv::cli
