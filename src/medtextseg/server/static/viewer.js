// The web viewer of `medtextseg serve` (README, "Web viewer"): uploads one case to POST /jobs, polls the job, and
// shows the first channel with the chosen prompt's mask, probability and uncertainty maps in NiiVue (three planes
// and 3D). window.viewerState reports what is shown (the test reads it).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { job: null, results: [], base: null, shown: null, maskVoxels: null, error: null };
  window.viewerState = state;
  let nv = null;

  function setStatus(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
    if (error) { state.error = text; document.body.dataset.state = "error"; }
  }

  function headers() {
    const token = $("token").value.trim();
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({}, options, { headers: headers() }));
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(response.status + ": " + detail);
    }
    return response;
  }

  async function describeModel() {
    try {
      const health = await (await api("health")).json();
      const model = health.model;
      const channels = model.channels && model.channels.length ? model.channels.join(", ")
        : model.in_channels + " channel(s)";
      $("model").textContent = "model " + model.run + " (" + channels + "), medtextseg " + health.medtextseg_version;
    } catch (error) {
      $("model").textContent = "model: " + error.message + (String(error.message).startsWith("401")
        ? " (enter the token)" : "");
    }
  }

  function sortedFiles() {
    return Array.from($("files").files).sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  }

  async function segment() {
    const files = sortedFiles();
    const prompts = $("prompts").value.split("\n").map((p) => p.trim()).filter((p) => p);
    if (!files.length) { setStatus("choose the case's channel files first", true); return; }
    if (!prompts.length) { setStatus("type at least one prompt", true); return; }
    document.body.dataset.state = "running";
    state.error = null;
    $("segment").disabled = true;
    try {
      const form = new FormData();
      files.forEach((file) => form.append("image", file, file.name));
      prompts.forEach((prompt) => form.append("prompt", prompt));
      form.append("probabilities", "true");
      if ($("want-uncertainty").checked) form.append("uncertainty", "true");
      if ($("threshold").value) form.append("threshold", $("threshold").value);
      setStatus("uploading " + files.length + " file(s)...");
      let job = await (await api("jobs", { method: "POST", body: form })).json();
      const started = performance.now();
      while (job.status === "queued" || job.status === "running") {
        const where = job.status === "queued" ? " (position " + job.position + ")"
          : job.progress && job.progress.windows ? " (" + Math.round(100 * job.progress.fraction) + "%)" : "";
        setStatus(job.status + where + "...");
        await new Promise((resolve) => setTimeout(resolve, 250));
        job = await (await api("jobs/" + job.id)).json();
      }
      if (job.status !== "done") throw new Error(job.detail || ("the job ended " + job.status));
      state.job = job.id;
      state.results = job.summary.results;
      const base = files[0].name.endsWith(".zip") ? null : files[0];
      await showBase(base);
      fillResults();
      await showResult(0);
      setStatus("done in " + ((performance.now() - started) / 1000).toFixed(1) + " s (" + prompts.length +
        " prompt(s))");
      document.body.dataset.state = "done";
      describeModel();
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      $("segment").disabled = false;
    }
  }

  async function showBase(file) {
    for (const volume of nv.volumes.slice()) nv.removeVolume(volume);
    state.base = null;
    if (file) {
      const image = await niivue.NVImage.loadFromFile({ file: file, name: file.name, colormap: "gray" });
      nv.addVolume(image);
      state.base = file.name;
    }
  }

  function fillResults() {
    const select = $("result");
    select.innerHTML = "";
    const body = $("results").querySelector("tbody");
    body.innerHTML = "";
    state.results.forEach((record, index) => {
      select.add(new Option(record.prompt, String(index)));
      const row = body.insertRow();
      [record.prompt, record.voxels, record.volume_ml].forEach((value) => { row.insertCell().textContent = value; });
    });
    const uncertain = state.results.some((record) => record.uncertainty);
    $("show-uncertainty").disabled = !uncertain;
    $("show-uncertainty").checked = false;
    $("results-box").hidden = false;
  }

  const LAYERS = [
    { key: "mask", colormap: "red", toggle: "show-mask", cal: [0.5, 1] },
    { key: "probability", colormap: "warm", toggle: "show-probability", cal: [0.05, 1] },
    { key: "uncertainty", colormap: "cool", toggle: "show-uncertainty", cal: null },
  ];

  async function showResult(index) {
    const record = state.results[index];
    const keep = state.base ? 1 : 0;
    for (const volume of nv.volumes.slice(keep)) nv.removeVolume(volume);
    state.layers = [];
    for (const layer of LAYERS) {
      if (!record[layer.key]) continue;
      const options = { url: "jobs/" + state.job + "/files/" + record[layer.key], headers: headers(),
                        name: record[layer.key], colormap: layer.colormap, opacity: 0 };
      if (layer.cal) { options.cal_min = layer.cal[0]; options.cal_max = layer.cal[1]; }
      const image = await niivue.NVImage.loadFromUrl(options);
      nv.addVolume(image);
      state.layers.push(layer.key);
      if (layer.key === "mask") state.maskVoxels = image.img.reduce((sum, value) => sum + (value > 0 ? 1 : 0), 0);
    }
    state.shown = record.prompt;
    state.volumes = nv.volumes.length;
    applyVisibility();
  }

  function applyVisibility() {
    const keep = state.base ? 1 : 0;
    const opacity = Number($("opacity").value);
    (state.layers || []).forEach((key, i) => {
      const layer = LAYERS.find((l) => l.key === key);
      nv.setOpacity(keep + i, $(layer.toggle).checked ? (key === "mask" ? opacity : 0.7) : 0);
    });
    nv.updateGLVolume();
    state.opacities = nv.volumes.map((volume) => volume.opacity);
  }

  async function download(path, name) {
    try {
      const blob = await (await api(path)).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = name;
      document.body.appendChild(link);
      link.click();
      setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  async function start() {
    $("token").value = sessionStorage.getItem("medtextseg-token") || "";
    $("token").addEventListener("change", () => { sessionStorage.setItem("medtextseg-token", $("token").value);
                                                 describeModel(); });
    if (typeof niivue === "undefined") {
      setStatus("the viewer's NiiVue bundle is missing: run `bash scripts/setup_viewer.sh` and restart the server",
                true);
      return;
    }
    nv = new niivue.Niivue({ backColor: [0.07, 0.07, 0.07, 1], show3Dcrosshair: true, isColorbar: false,
                             crosshairColor: [0.2, 0.8, 1, 1], crosshairWidth: 1,
                             onLocationChange: (data) => { $("location").textContent = data.string; } });
    await nv.attachToCanvas($("gl"));
    nv.setSliceType(nv.sliceTypeMultiplanar);
    $("segment").addEventListener("click", segment);
    $("result").addEventListener("change", () => showResult(Number($("result").value)));
    ["show-mask", "show-probability", "show-uncertainty", "opacity"].forEach((id) =>
      $(id).addEventListener("input", applyVisibility));
    $("slice").addEventListener("input", () => {
      nv.scene.crosshairPos[2] = Number($("slice").value);
      nv.drawScene();
      nv.createOnLocationChange();
    });
    $("download-mask").addEventListener("click", () => {
      const record = state.results[Number($("result").value)];
      download("jobs/" + state.job + "/files/" + record.mask, record.mask);
    });
    $("download-all").addEventListener("click", () => download("jobs/" + state.job + "/result",
                                                               "segmentation-" + state.job + ".zip"));
    document.body.dataset.state = "ready";
    describeModel();
  }

  start().catch((error) => setStatus("the viewer could not start: " + error.message, true));
})();
