// Native harness for a StreamerSystem compiled with CXXRTL: the whole per-cycle loop of a
// matrix job runs here, so no Python runs per cycle. Built by lpu.sim.native, which defines
// LPU_MEM (the memory model's storage), LPU_MEM_BITS and LPU_OUT_BITS.
#include <cstdint>
#include <cstring>
#include "design.h"

using namespace cxxrtl_yosys;

namespace {

struct Sim {
  cxxrtl_design::p_top top;
  uint64_t cycles = 0;
};

void tick(Sim *s) {
  s->top.p_clk.set<bool>(false);
  s->top.step();
  s->top.p_clk.set<bool>(true);
  s->top.step();
  s->cycles++;
}

template <size_t Bits>
void set_chunks(value<Bits> &v, const uint32_t *chunks) {
  for (size_t i = 0; i < value<Bits>::chunks; i++) v.data[i] = chunks[i];
}

template <size_t Bits>
void get_chunks(const value<Bits> &v, uint32_t *chunks) {
  for (size_t i = 0; i < value<Bits>::chunks; i++) chunks[i] = v.data[i];
}

// xorshift32: the consumer's random backpressure
uint32_t next_rand(uint32_t &state) {
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return state;
}

}  // namespace

extern "C" {

void *lpu_sim_new() {
  Sim *s = new Sim;
  s->top.p_rst.set<bool>(true);
  tick(s);
  tick(s);
  s->top.p_rst.set<bool>(false);
  tick(s);
  s->cycles = 0;
  return s;
}

void lpu_sim_free(void *p) { delete static_cast<Sim *>(p); }

size_t lpu_sim_mem_chunks() { return value<LPU_MEM_BITS>::chunks; }

// Load words (chunks_per_word uint32 each) into the memory model starting at word `at`.
int lpu_sim_load(void *p, size_t at, const uint32_t *data, size_t words) {
  Sim *s = static_cast<Sim *>(p);
  auto &mem = s->top.LPU_MEM;
  if (at + words > mem.depth) return -1;
  const size_t cpw = value<LPU_MEM_BITS>::chunks;
  for (size_t i = 0; i < words; i++)
    for (size_t c = 0; c < cpw; c++) mem[at + i].data[c] = data[i * cpw + c];
  return 0;
}

void lpu_sim_write_act(void *p, const uint32_t *payload) {
  Sim *s = static_cast<Sim *>(p);
  set_chunks(s->top.p_act__wr____payload, payload);
  s->top.p_act__wr____valid.set<bool>(true);
  tick(s);
  s->top.p_act__wr____valid.set<bool>(false);
}

// Run one job. Outputs are stored as out_chunks uint32 each. Returns the cycles from the
// descriptor being accepted to the streamer going idle, or -1 if max_cycles pass first, or -2
// if more than out_cap outputs arrive.
int64_t lpu_sim_run(void *p, const uint32_t *desc, uint32_t ready_threshold, uint32_t seed,
                    uint32_t *out, size_t out_cap, size_t *n_out, uint32_t *status,
                    uint32_t *perf, uint64_t max_cycles) {
  Sim *s = static_cast<Sim *>(p);
  auto &t = s->top;
  const size_t oc = decltype(t.p_o__stream____payload)::chunks;
  uint32_t rnd = seed ? seed : 1;
  *n_out = 0;
  set_chunks(t.p_desc____payload, desc);
  t.p_desc____valid.set<bool>(true);
  // wait for the descriptor to be taken
  uint64_t guard = 0;
  t.step();
  while (!t.p_desc____ready.get<bool>()) {
    tick(s);
    if (++guard > max_cycles) return -1;
  }
  tick(s);
  t.p_desc____valid.set<bool>(false);
  int64_t cycles = 1;
  for (;;) {
    bool ready = (next_rand(rnd) & 0xffff) < ready_threshold;
    t.p_o__stream____ready.set<bool>(ready);
    t.step();  // settle combinational outputs for the new ready
    bool busy = t.p_status.get<uint32_t>() & 1;
    if (!busy) break;
    if (ready && t.p_o__stream____valid.get<bool>()) {
      if (*n_out >= out_cap) return -2;
      get_chunks(t.p_o__stream____payload, out + (*n_out) * oc);
      (*n_out)++;
    }
    tick(s);
    if (++cycles > (int64_t)max_cycles) return -1;
  }
  t.p_o__stream____ready.set<bool>(false);
  *status = t.p_status.get<uint32_t>();
  get_chunks(t.p_perf, perf);
  return cycles;
}

size_t lpu_sim_out_chunks() { return value<LPU_OUT_BITS>::chunks; }

uint64_t lpu_sim_cycles(void *p) { return static_cast<Sim *>(p)->cycles; }
}
