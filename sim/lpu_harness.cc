// Fast whole-system simulation of an LPUSystem (LPU + memory model) compiled by Verilator.
// (Verilator escapes the double underscore of the exported port names as ___05F.)
// The host side (lpu.sim.fast) talks to this program over pipes; the per-cycle loop stays here.
//
// Requests on stdin:  u32 n, then n bytes to send to the LPU's rx port (n = 0 ends the run).
// Replies on stdout:  u64 total cycles, u32 m, then the m bytes that came out of tx: one whole
//                     reply frame, or what arrived before max_cycles idle cycles passed.
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

// Length of a whole reply frame at the start of got (0 while incomplete).
static size_t frame_length(const std::vector<uint8_t> &got) {
  if (got.size() < 4) return 0;
  size_t len = got[2] | (got[3] << 8);
  if (len > LPU_MAX_PAYLOAD) len = LPU_MAX_PAYLOAD;
  return got.size() >= 6 + len ? 6 + len : 0;
}

int main(int argc, char **argv) {
  Verilated::commandArgs(argc, argv);
  top = new Vtop;
  top->rst = 1;
  tick();
  tick();
  top->rst = 0;
  top->rx___05Fvalid = 0;
  top->tx___05Fready = 0;
  tick();
  const uint64_t max_idle = LPU_MAX_IDLE;
  std::vector<uint8_t> req, got;
  for (;;) {
    uint32_t n;
    if (!read_all(&n, 4) || n == 0) break;
    req.resize(n);
    if (!read_all(req.data(), n)) break;
    got.clear();
    top->tx___05Fready = 1;
    size_t sent = 0;
    uint64_t idle = 0;
    bool synced = false;
    // Send the request (a byte per cycle while the device takes them), listening meanwhile.
    for (;;) {
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
        if (!synced && byte == LPU_REPLY_SYNC) synced = true;
        if (synced) got.push_back(byte);
        idle = 0;
        if (synced && frame_length(got)) break;
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
