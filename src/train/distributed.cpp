#include "vrwkv/distributed.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

#include "vrwkv/error.hpp"

namespace vrwkv::train {

int exit_code_of(std::exception_ptr e) {
  if (!e) return 0;
  try {
    std::rethrow_exception(e);
  } catch (const PeerFailure& p) {
    return p.exit_code();
  } catch (const Error& err) {
    return err.kind() == Error::Kind::Input ? 2 : 1;
  } catch (...) {
    return 1;
  }
}

void Communicator::agree(std::exception_ptr failure) {
  // Each rank's exit code (0: it did not fail), in rank order.
  const int n = size();
  std::vector<double> codes(n);
  const double mine = failure ? exit_code_of(failure) : 0;
  allgather(&mine, 1, codes.data());
  const auto first = std::find_if(codes.begin(), codes.end(), [](double c) { return c != 0; });
  if (first == codes.end()) return;
  failure_agreed_ = true;
  if (n == 1) std::rethrow_exception(failure);
  // The message goes out before any rank ends (a launcher may stop the others as soon as one exits).
  parting();
  const int failed = static_cast<int>(first - codes.begin());
  if (failed == rank()) {
    std::string text;
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      text = e.what();
    } catch (...) {
      text = "unknown failure";
    }
    if (rank() == 0) std::fprintf(stderr, "vrwkv: %s\n", text.c_str());
    else std::fprintf(stderr, "vrwkv: rank %d: %s\n", rank(), text.c_str());
    std::fflush(stderr);
  }
  barrier();
  throw PeerFailure(failed, static_cast<int>(*first));
}

void LocalCommunicator::allgather(const double* mine, std::int64_t n, double* all) { std::copy(mine, mine + n, all); }

void LocalCommunicator::scatterv(const float* full, float* mine, const std::vector<std::int64_t>& offsets) {
  std::copy(full + offsets[0], full + offsets[1], mine);
}

void LocalCommunicator::send_to_lead(int, const float* mine, float* into, std::int64_t n) {
  std::copy(mine, mine + n, into);
}

std::vector<std::int64_t> even_slices(std::int64_t n, int ranks) {
  if (ranks < 1) input_error("a group of ", ranks, " ranks, expected at least 1");
  std::vector<std::int64_t> offsets(ranks + 1);
  for (int r = 0; r <= ranks; ++r) offsets[r] = n * r / ranks;
  return offsets;
}

}  // namespace vrwkv::train
