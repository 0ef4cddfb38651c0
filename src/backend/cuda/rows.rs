//! Rust side of the row kernels in `kernels/elementwise.cu`: gathers (select_rows, a context's
//! cache rows, MoE token permutation), the weighted scatter-add of MoE outputs, and fills.

use super::error::driver_err;
use super::kernels;
use super::launch::Order;
use super::transfer::host_values;
use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};

const THREADS: u32 = 256;

fn op_err(op: &'static str, message: String) -> Error {
    Error::Op { op, message }
}

impl CudaDevice {
    /// Row `i` of `out` = the first `out.cols` values of row `rows[i]` of `src`, whose rows are
    /// `src_cols` wide and which holds `src_rows` of them.
    /// `key` names the step buffer the indices go to (one per purpose within a step).
    pub fn gather_rows<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        src: &CudaView<'_, T>,
        src_cols: usize,
        rows: &[u32],
        key: &'static str,
    ) -> Result<()> {
        let src_rows = src.len() / src_cols.max(1);
        if out.rows != rows.len() || out.cols > src_cols {
            return Err(op_err(
                "gather_rows",
                format!(
                    "{} rows of width {} into [{}, {}]",
                    rows.len(),
                    src_cols,
                    out.rows,
                    out.cols
                ),
            ));
        }
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= src_rows) {
            return Err(op_err("gather_rows", format!("row {bad} of {src_rows}")));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let idx = self.step_values((key, 0), rows)?;
        // SAFETY: every index was checked against `src` above, and `out` has one row per index.
        unsafe { self.gather_rows_indexed(out, src, src_cols, idx.address) }
    }

    /// [`Self::gather_rows`] with the row indices already on the device (at address `idx`, one
    /// per row of `out`), for many launches from one upload.
    ///
    /// # Safety
    /// Every index must be below the number of `src_cols`-wide rows of `src`, `idx` must hold
    /// `out.rows` of them and `out.cols ≤ src_cols`: the kernel reads unchecked.
    pub unsafe fn gather_rows_indexed<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        src: &CudaView<'_, T>,
        src_cols: usize,
        idx: u64,
    ) -> Result<()> {
        let rows = out.rows;
        if rows == 0 {
            return Ok(());
        }
        let (src_cols, cols) = (src_cols as i32, out.cols as i32);
        let args = self.args(&[&out.data, src, &idx, &src_cols, &cols]);
        // SAFETY: launch's contract. The caller guarantees every index within `src` and one per row
        // of `out`.
        unsafe {
            self.launch(
                kernels::GATHER_ROWS.of::<T>(),
                row_config(rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// `out[rows[i]] += weights[i] · y[i]` for distinct `rows`.
    pub fn scatter_add_rows<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        y: &GpuTensor<T>,
        rows: &[u32],
        weights: &[f32],
    ) -> Result<()> {
        if y.rows != rows.len() || weights.len() != rows.len() || y.cols != out.cols {
            return Err(op_err(
                "scatter_add_rows",
                format!(
                    "[{}, {}] into [{}, {}] with {} rows and {} weights",
                    y.rows,
                    y.cols,
                    out.rows,
                    out.cols,
                    rows.len(),
                    weights.len()
                ),
            ));
        }
        let mut seen = vec![false; out.rows];
        for &r in rows {
            let slot = seen
                .get_mut(r as usize)
                .ok_or_else(|| op_err("scatter_add_rows", format!("row {r} of {}", out.rows)))?;
            if std::mem::replace(slot, true) {
                return Err(op_err("scatter_add_rows", format!("row {r} twice")));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let idx = self.upload_values(rows)?;
        let weights = self.upload_values(weights)?;
        // SAFETY: rows were checked in range and distinct above; one weight and row of `y` each.
        unsafe { self.scatter_add_rows_indexed(out, y, &idx.slice(..), &weights.slice(..)) }
    }

    /// [`Self::scatter_add_rows`] with the row indices and weights already on the device.
    ///
    /// # Safety
    /// `idx` and `weights` must hold `y.rows` values, the indices distinct and below `out.rows`,
    /// and `y.cols == out.cols`: the kernel writes unchecked.
    pub unsafe fn scatter_add_rows_indexed<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        y: &GpuTensor<T>,
        idx: &CudaView<'_, u32>,
        weights: &CudaView<'_, f32>,
    ) -> Result<()> {
        let rows = y.rows;
        if rows == 0 {
            return Ok(());
        }
        let cols = out.cols as i32;
        let args = self.args(&[&out.data, &y.data, idx, weights, &cols]);
        // SAFETY: launch's contract. The caller guarantees rows in range and distinct, so no two
        // threads write one element.
        unsafe {
            self.launch(
                kernels::SCATTER_ADD_ROWS.of::<T>(),
                row_config(rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// Index of the largest value of each row, ties to the lowest index.
    pub fn argmax_rows<T: GpuFloat>(&self, x: &GpuTensor<T>) -> Result<Vec<u32>> {
        if x.rows == 0 || x.cols == 0 {
            return Ok(vec![0; x.rows]);
        }
        let ids = self.upload_values(&vec![u32::MAX; x.rows])?;
        let cols = x.cols as i32;
        let args = self.args(&[&x.data, &ids, &cols]);
        // SAFETY: launch's contract. Block `r` reads row `r` of `x` and writes `ids[r]`, both in
        // bounds.
        unsafe {
            self.launch(
                kernels::ARGMAX_ROWS.of::<T>(),
                row_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        self.fetch(&ids, "argmax ids")
    }

    /// Per row `r`, `Σ exp((x − max) / temperatures[r])` in f64 (see `Backend::softmax_totals`).
    pub fn softmax_totals<T: GpuFloat>(
        &self,
        x: &GpuTensor<T>,
        temperatures: &[f32],
    ) -> Result<Vec<f64>> {
        crate::backend::check_temperatures(x.rows, temperatures)?;
        if x.cols == 0 {
            return Err(op_err("softmax_totals", "rows of no columns".into()));
        }
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        let totals = self.launch_softmax_totals(x, temperatures)?;
        self.fetch(&totals, "row totals")
    }

    /// The softmax_totals kernel's launch: the totals stay on the device.
    fn launch_softmax_totals<T: GpuFloat>(
        &self,
        x: &GpuTensor<T>,
        temperatures: &[f32],
    ) -> Result<CudaSlice<f64>> {
        let temps = self.upload_values(temperatures)?;
        // SAFETY: every element is written by the kernel below (one per block) before the copy.
        let totals = unsafe { self.stream.alloc::<f64>(x.rows) }
            .map_err(driver_err("allocating row totals"))?;
        let cols = x.cols as i32;
        let args = self.args(&[&x.data, &cols, &temps, &totals]);
        // SAFETY: launch's contract. Block `r` reads row `r` of `x` and `temperatures[r]` and
        // writes `totals[r]`.
        unsafe {
            self.launch(
                kernels::SOFTMAX_TOTALS.of::<T>(),
                row_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(totals)
    }

    /// The `k` largest `(column, value)` of each row (k ≤ `MAX_TOP_K`), largest first, ties
    /// to the lower column, in the host's order (`total_cmp`).
    pub fn top_k_rows<T: GpuFloat>(
        &self,
        x: &GpuTensor<T>,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        if k == 0 || k > x.cols || k > MAX_TOP_K {
            return Err(op_err(
                "top_k_rows",
                format!("top {k} of rows of {} (at most {MAX_TOP_K})", x.cols),
            ));
        }
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        let (values, ids) = self.launch_top_k(x, k)?;
        self.fetch_parts(
            &[
                (self.address(&values), values.len() * 4),
                (self.address(&ids), ids.len() * 4),
            ],
            "top-k candidates",
            |parts| candidates(parts[0], parts[1], k),
        )
    }

    /// [`Self::top_k_rows`] and, where `temperatures` are given, [`Self::softmax_totals`], with
    /// one wait for the device for both.
    pub fn top_k_and_totals<T: GpuFloat>(
        &self,
        x: &GpuTensor<T>,
        k: usize,
        temperatures: &[f32],
    ) -> Result<(crate::backend::RowCandidates, Vec<f64>)> {
        crate::backend::check_temperatures(x.rows, temperatures)?;
        if x.rows == 0 || k == 0 || k > x.cols || k > MAX_TOP_K {
            return Ok((
                self.top_k_rows(x, k)?,
                self.softmax_totals(x, temperatures)?,
            ));
        }
        let (values, ids) = self.launch_top_k(x, k)?;
        let totals = self.launch_softmax_totals(x, temperatures)?;
        self.fetch_parts(
            &[
                (self.address(&values), values.len() * 4),
                (self.address(&ids), ids.len() * 4),
                (self.address(&totals), totals.len() * 8),
            ],
            "top-k candidates and row totals",
            |parts| {
                (
                    candidates(parts[0], parts[1], k),
                    host_values::<f64>(parts[2]),
                )
            },
        )
    }

    /// The top_k_rows kernel's launch: each row's `k` values and ids stay on the device.
    fn launch_top_k<T: GpuFloat>(
        &self,
        x: &GpuTensor<T>,
        k: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<u32>)> {
        let values = self.upload_values(&vec![f32::NAN; x.rows * k])?;
        let ids = self.upload_values(&vec![u32::MAX; x.rows * k])?;
        let (cols, k_i) = (x.cols as i32, k as i32);
        let args = self.args(&[&x.data, &cols, &k_i, &values, &ids]);
        let cfg = LaunchConfig {
            grid_dim: (x.rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch's contract. Block `r` reads row `r` of `x` and writes entries [r·k, (r +
        // 1)·k) of `values` and `ids`.
        unsafe { self.launch(kernels::TOP_K_ROWS.of::<T>(), cfg, Order::Serial, &args) }?;
        Ok((values, ids))
    }

    /// A `[rows, cols]` tensor of generated weights, equal to what the host generates.
    pub fn random_tensor<T: GpuFloat>(
        &self,
        rows: usize,
        cols: usize,
        fill: &crate::weights::random::RandomFill,
    ) -> Result<GpuTensor<T>> {
        use crate::weights::random::{RandomFill, CHUNK};
        let (base, std) = match *fill {
            RandomFill::Constant(v) => return self.tensor(rows, cols, Some(v)),
            RandomFill::Normal { base, std } => (base, std),
        };
        let t = self.tensor::<T>(rows, cols, None)?;
        let n = rows * cols;
        if n == 0 {
            return Ok(t);
        }
        let (count, chunk) = (n as i64, CHUNK as i64);
        let cfg = LaunchConfig {
            // A thread per 16-byte pack (the kernel strides over the grid past 65,536 blocks).
            grid_dim: (
                n.div_ceil(THREADS as usize * 8).clamp(1, 65_536) as u32,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = self.args(&[&t.data, &count, &base, &std, &chunk]);
        // SAFETY: launch's contract. It writes indices below n, the tensor's length.
        unsafe { self.launch(kernels::RANDOM_NORMAL.of::<T>(), cfg, Order::Serial, &args) }?;
        Ok(t)
    }

    /// Sets every element of `x` to `value`.
    pub fn fill<T: GpuFloat>(&self, x: &mut CudaSlice<T>, value: f32) -> Result<()> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let count = n as i64;
        let cfg = LaunchConfig {
            // A thread per 16-byte pack (the kernel strides over the grid past 65,536 blocks).
            grid_dim: (
                n.div_ceil(THREADS as usize * 8).clamp(1, 65_536) as u32,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = self.args(&[x, &count, &value]);
        // SAFETY: launch's contract. It writes indices below `n`.
        unsafe { self.launch(kernels::FILL.of::<T>(), cfg, Order::Serial, &args) }?;
        Ok(())
    }

    /// Sets every byte of `x` to `byte`.
    pub fn fill_bytes<T>(&self, x: &CudaSlice<T>, byte: u8) -> Result<()> {
        let bytes = x.len() * std::mem::size_of::<T>();
        // SAFETY: the range is `x`'s own memory, written in stream order.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                self.address(x),
                byte,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .map_err(driver_err(format!(
            "setting {bytes} bytes on {}",
            self.info.name
        )))
    }

    /// A `[rows, cols]` tensor whose contents are set by `value` (NaN to catch unwritten
    /// elements) or left as allocated (`None`), for outputs every element of which a kernel
    /// writes.
    pub fn tensor<T: GpuFloat>(
        &self,
        rows: usize,
        cols: usize,
        value: Option<f32>,
    ) -> Result<GpuTensor<T>> {
        let len = (rows * cols).max(1);
        // SAFETY: the memory is either filled right below or is an output whose every element
        // the next kernel writes before anything reads it.
        let mut data = unsafe { self.stream.alloc::<T>(len) }.map_err(driver_err(format!(
            "allocating a [{rows}, {cols}] tensor on {}",
            self.info.name
        )))?;
        if let Some(v) = value {
            self.fill(&mut data, v)?;
        }
        Ok(GpuTensor { data, rows, cols })
    }
}

/// The top-k kernel's candidate arrays (`TOP_K_MAX` in elementwise.cu).
pub const MAX_TOP_K: usize = 64;

fn row_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows of `k` (id, value) candidates from the top-k kernel's values and ids, as bytes.
fn candidates(values: &[u8], ids: &[u8], k: usize) -> Vec<Vec<(u32, f32)>> {
    let (values, ids) = (host_values::<f32>(values), host_values::<u32>(ids));
    ids.chunks_exact(k)
        .zip(values.chunks_exact(k))
        .map(|(ids, values)| ids.iter().copied().zip(values.iter().copied()).collect())
        .collect()
}
