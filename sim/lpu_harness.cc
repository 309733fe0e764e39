// Fast whole-system simulation of an LPUSystem (LPU + memory model) compiled by Verilator,
// wrapped in lpu.sim.fast.FastTop (clock port, power-on reset inside).
// (Verilator escapes the double underscore of the exported port names as ___05F.)
// The host side (lpu.sim.fast) talks to this program over pipes; the per-cycle loop stays here.
//
// Requests on stdin:  u32 n, u32 k, then n bytes to send to the LPU's rx port: k request
//                     frames, sent back to back as fast as the device takes them (n = 0 ends
//                     the run).
// Replies on stdout:  u64 total cycles, u32 m, then the m bytes that came out of tx: k whole
//                     reply frames, or what arrived before max_idle idle cycles passed.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

static Vtop *top;
static uint64_t cycles = 0;

static void tick() {
  top->clk = 0;
  top->eval();
  top->clk = 1;
  top->eval();
  cycles++;
}

static bool read_all(void *buf, size_t n) { return fread(buf, 1, n, stdin) == n; }

// Length of a whole reply frame at got[start...] (0 while incomplete).
static size_t frame_length(const std::vector<uint8_t> &got, size_t start) {
  size_t have = got.size() - start;
  if (have < LPU_HEADER_BYTES) return 0;
  size_t len = got[start + 2] | (got[start + 3] << 8);
  if (len > LPU_MAX_PAYLOAD) len = LPU_MAX_PAYLOAD;
  return have >= LPU_FRAME_OVERHEAD + len ? LPU_FRAME_OVERHEAD + len : 0;
}

int main(int argc, char **argv) {
  Verilated::commandArgs(argc, argv);
  top = new Vtop;
  // The design holds itself in reset for its first cycles (FastTop's power-on reset).
  top->rx___05Fvalid = 0;
  top->tx___05Fready = 0;
  tick();
  tick();
  tick();
  const uint64_t max_idle = LPU_MAX_IDLE;
  std::vector<uint8_t> req, got;
  for (;;) {
    uint32_t n, k;
    if (!read_all(&n, 4) || n == 0 || !read_all(&k, 4)) break;
    req.resize(n);
    if (!read_all(req.data(), n)) break;
    got.clear();
    top->tx___05Fready = 1;
    size_t sent = 0, start = 0;  // start: where the reply frame being received begins in got
    uint32_t done = 0;
    uint64_t idle = 0;
    bool synced = false;
    // Send the requests (a byte per cycle while the device takes them), listening meanwhile.
    while (done < k) {
      if (sent < n) {
        top->rx___05Fvalid = 1;
        top->rx___05Fpayload = req[sent];
      } else {
        top->rx___05Fvalid = 0;
      }
      top->eval();
      bool took = sent < n && top->rx___05Fready;
      bool out = top->tx___05Fvalid;
      uint8_t byte = top->tx___05Fpayload;
      tick();
      if (took) sent++;
      if (out) {
        idle = 0;
        if (!synced && byte == LPU_REPLY_SYNC) synced = true;
        if (!synced) continue;
        got.push_back(byte);
        size_t len = frame_length(got, start);
        if (len) {
          start += len;
          done++;
          synced = false;
        }
      } else if (sent == n && ++idle > max_idle) {
        break;
      }
    }
    top->rx___05Fvalid = 0;
    top->tx___05Fready = 0;
    uint32_t m = got.size();
    fwrite(&cycles, 8, 1, stdout);
    fwrite(&m, 4, 1, stdout);
    fwrite(got.data(), 1, m, stdout);
    fflush(stdout);
  }
  top->final();
  delete top;
  return 0;
}
