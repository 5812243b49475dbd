// tagvision portal: a little plain JavaScript on top of server-rendered pages. Every page works
// without it except the live parts: uploads with progress, training status, the threshold slider, the
// candidates of an image search arriving.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  // fetch() that sends the CSRF token and answers parsed JSON, or throws an Error whose message is a sentence.
  async function request(url, options = {}) {
    const headers = Object.assign({ "Accept": "application/json", "X-CSRF-Token": csrf() }, options.headers || {});
    let response;
    try {
      response = await fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers }));
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new Error("The server could not be reached. Check the connection and try again.");
    }
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      if (response.status === 401) {
        throw new Error("Your session has ended. Reload the page and log in again.");
      }
      throw new Error((body && body.message) || `The server answered ${response.status}.`);
    }
    return body;
  }

  // ------------------------------------------------------------------ confirmations
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  });
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  // ------------------------------------------------------------------ selection in the image grid
  function setUpSelection(root) {
    const form = root.querySelector("[data-selection]");
    if (!form) return;
    const boxes = () => Array.from(form.querySelectorAll('input[name="image"]'));
    const all = form.querySelector("[data-select-all]");
    const count = form.querySelector("[data-selected-count]");
    const update = () => {
      const chosen = boxes().filter((b) => b.checked).length;
      count.textContent = `${chosen} selected`;
      all.checked = chosen > 0 && chosen === boxes().length;
      all.indeterminate = chosen > 0 && chosen < boxes().length;
    };
    all.addEventListener("change", () => { boxes().forEach((b) => { b.checked = all.checked; }); update(); });
    form.addEventListener("change", (event) => { if (event.target.name === "image") update(); });
    update();
  }

  // ------------------------------------------------------------------ uploads
  function setUpUpload(panel) {
    const input = panel.querySelector("[data-upload-input]");
    const zone = panel.querySelector("[data-dropzone]");
    const start = panel.querySelector("[data-upload-start]");
    const chosen = panel.querySelector("[data-upload-chosen]");
    const progress = panel.querySelector("[data-upload-progress]");
    const bar = panel.querySelector("[data-upload-bar]");
    const status = panel.querySelector("[data-upload-status]");
    const errorBox = panel.querySelector("[data-upload-errors]");
    const errorList = errorBox.querySelector("ul");
    const tag = panel.querySelector("[data-upload-tag]");
    const batchSize = Number(panel.dataset.batch) || 4;
    const parallel = 2;
    let files = [];
    let busy = false;

    const choose = (list) => {
      files = Array.from(list).filter((f) => f.size > 0 || f.type);
      const n = files.length;
      chosen.textContent = n ? `${n} file${n === 1 ? "" : "s"} ready to upload.` : "No files chosen.";
      start.textContent = n ? `Upload ${n} file${n === 1 ? "" : "s"}` : "Upload";
      start.disabled = busy || n === 0;
    };
    input.addEventListener("change", () => choose(input.files));
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (!busy) choose(event.dataTransfer.files);
    });

    start.addEventListener("click", async () => {
      if (busy || !files.length) return;
      busy = true;
      start.disabled = true;
      input.disabled = true;
      const total = files.length;
      const batches = [];
      for (let i = 0; i < total; i += batchSize) batches.push(files.slice(i, i + batchSize));
      let done = 0, added = 0, duplicates = 0, failed = 0;
      errorList.replaceChildren();
      errorBox.hidden = true;
      progress.hidden = false;
      bar.max = total;
      bar.value = 0;
      status.textContent = `Uploading ${total} files…`;
      const fail = (name, message) => {
        failed += 1;
        const item = document.createElement("li");
        item.textContent = `${name}: ${message}`;
        errorList.appendChild(item);
        errorBox.hidden = false;
      };
      const send = async (batch) => {
        const body = new FormData();
        batch.forEach((file) => body.append("file", file, file.name));
        if (tag.value) body.append("tag", tag.value);
        try {
          const result = await request(panel.dataset.url, { method: "POST", body });
          added += result.added;
          duplicates += result.duplicates;
          result.results.filter((r) => !r.ok).forEach((r) => fail(r.name, r.message));
        } catch (error) {
          batch.forEach((file) => fail(file.name, error.message));
        }
        done += batch.length;
        bar.value = done;
        status.textContent = `${done} of ${total} files uploaded`;
      };
      const queue = batches.slice();
      const worker = async () => { while (queue.length) await send(queue.shift()); };
      await Promise.all(Array.from({ length: parallel }, worker));
      const parts = [`${added} image${added === 1 ? "" : "s"} added`];
      if (duplicates) parts.push(`${duplicates} already in the project`);
      if (failed) parts.push(`${failed} not added (see below)`);
      status.textContent = `Done: ${parts.join(", ")}.`;
      busy = false;
      input.value = "";
      input.disabled = false;
      choose([]);
      await refresh();
    });
  }

  // Re-read this page and swap in its [data-refresh] parts (counts, grid) without a reload.
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      document.querySelectorAll("[data-refresh]").forEach((old) => {
        const fresh = page.getElementById(old.id);
        if (fresh) {
          old.replaceWith(fresh);
          setUpSelection(fresh);
        }
      });
    } catch (_) { /* the counts stay as they were; a reload shows them */ }
  }

  // ------------------------------------------------------------------ polling (training, exports)
  function setUpPoll(box) {
    const text = box.querySelector("[data-poll-text]");
    const finished = box.dataset.pollDone.split(" ");
    const announce = box.querySelector("[data-poll-announce]");
    const bar = box.querySelector("[data-poll-bar]");
    let lastStage = box.dataset.pollStage || null;
    const tick = async () => {
      let state;
      try { state = await request(box.dataset.poll); } catch (error) {
        text.textContent = error.message;
        return window.setTimeout(tick, 3000);
      }
      text.textContent = state.message;
      const stage = `${state.status} ${state.stage || ""}`;
      if (announce && stage !== lastStage) {  // a screen reader hears changes of stage, not every second
        lastStage = stage;
        announce.textContent = state.message;
      }
      if (bar && state.progress) {
        bar.max = state.progress.max;
        bar.value = state.progress.value;
      } else if (bar) {
        bar.removeAttribute("value");  // indeterminate
      }
      if (finished.includes(state.status)) {
        box.querySelectorAll("[data-poll-busy]").forEach((el) => el.remove());
        document.querySelectorAll(".flashes .flash.ok").forEach((el) => {  // "Iteration 2 is training." is over
          if (el.textContent.startsWith(`${state.name} is training`)) el.remove();
        });
        box.querySelectorAll("[data-poll-show]").forEach((el) => { el.hidden = el.dataset.pollShow !== state.status; });
        return refresh();
      }
      window.setTimeout(tick, 1000);
    };
    if (!finished.some((s) => text.textContent.includes(`: ${s}`))) window.setTimeout(tick, 500);
  }

  // The time budget matters for advanced training only.
  function setUpTrainingType(fieldset) {
    const budget = fieldset.querySelector("[data-budget]");
    const update = () => {
      budget.disabled = !fieldset.querySelector('input[name="type"][value="advanced"]').checked;
    };
    fieldset.addEventListener("change", update);
    update();
  }

  function setUpExports(box) {
    const tick = async () => {
      let exports;
      try { exports = await request(box.dataset.exports); } catch (_) { return window.setTimeout(tick, 3000); }
      if (exports.some((e) => e.status === "Exporting")) return window.setTimeout(tick, 1500);
      window.location.reload();
    };
    if (box.textContent.includes("Exporting")) window.setTimeout(tick, 1000);
  }

  // ------------------------------------------------------------------ threshold slider
  function setUpThreshold(box) {
    const input = box.querySelector("[data-threshold-input]");
    const shown = box.querySelector("[data-threshold-text]");
    const announce = document.querySelector("[data-threshold-announce]");
    const plot = document.querySelector("[data-pr-plot]");
    let timer = null;
    let inFlight = null;
    const apply = (figures) => {
      shown.textContent = figures.thresholdText;
      document.querySelectorAll("[data-figure]").forEach((el) => { el.textContent = figures.text[el.dataset.figure]; });
      document.querySelectorAll("[data-figure-std]").forEach((el) => {
        el.textContent = `${(figures[el.dataset.figureStd] * 100).toFixed(1)}%`;
      });
      figures.perTagPerformance.forEach((tag) => {
        const row = document.querySelector(`tr[data-tag="${tag.id}"]`);
        if (row) row.querySelectorAll("[data-key]").forEach((cell) => { cell.textContent = tag.text[cell.dataset.key]; });
        const marker = plot && plot.querySelector(`[data-marker="${tag.id}"]`);
        if (marker) {
          const d = plot.dataset;
          marker.setAttribute("cx", (Number(d.left) + tag.recall * Number(d.width)).toFixed(2));
          marker.setAttribute("cy", (Number(d.top) + (1 - tag.precision) * Number(d.height)).toFixed(2));
        }
      });
      announce.textContent = `At threshold ${figures.thresholdText}: precision ${figures.text.precision}, ` +
        `recall ${figures.text.recall}.`;
      const url = new URL(window.location.href);
      url.searchParams.set("threshold", figures.threshold);
      window.history.replaceState(null, "", url);
    };
    const load = async () => {
      if (inFlight) inFlight.abort();
      inFlight = new AbortController();
      shown.textContent = `${Math.round(Number(input.value) * 100)}%`;
      try {
        apply(await request(`${box.dataset.url}?threshold=${encodeURIComponent(input.value)}`,
                            { signal: inFlight.signal }));
      } catch (error) {
        if (error.name !== "AbortError") announce.textContent = error.message;
      }
    };
    input.addEventListener("input", () => {
      shown.textContent = `${Math.round(Number(input.value) * 100)}%`;
      window.clearTimeout(timer);
      timer = window.setTimeout(load, 120);
    });
  }

  // ------------------------------------------------------------------ search images for tags
  function setUpSearchForm(form) {
    const provider = form.querySelector("[data-search-provider]");
    const library = form.querySelector("[data-library-field]");
    if (!provider || !library) return;
    const update = () => { library.hidden = provider.value !== "library"; };
    provider.addEventListener("change", update);
    update();
  }

  function setUpSearch(box) {
    const message = box.querySelector("[data-search-message]");
    const announce = box.querySelector("[data-search-announce]");
    const review = box.querySelector("[data-review]");
    const add = review.querySelector("[data-review-add]");
    const discard = review.querySelector("[data-review-discard]");
    const count = review.querySelector("[data-review-count]");
    const help = review.querySelector("[data-review-help]");
    const cancel = box.querySelector("[data-search-cancel]");
    let seen = Number(box.dataset.seen) || 0;
    let running = box.dataset.running === "true";
    const done = new Set();
    const boxes = () => Array.from(box.querySelectorAll("input[data-candidate]"));

    const updateCount = () => {
      const all = boxes();
      const ticked = all.filter((b) => b.checked).length;
      count.textContent = `${ticked} of ${all.length} ticked`;
      add.textContent = `Add ${ticked} ticked image${ticked === 1 ? "" : "s"}`;
      add.disabled = running || ticked === 0;
      discard.disabled = running || all.length === 0;
      box.querySelectorAll("[data-tag-group]").forEach((group) => {
        const own = Array.from(group.querySelectorAll("input[data-candidate]"));
        const keep = group.querySelector("[data-tag-all]");
        if (!keep) return;
        const on = own.filter((b) => b.checked).length;
        keep.checked = own.length > 0 && on === own.length;
        keep.indeterminate = on > 0 && on < own.length;
        keep.disabled = own.length === 0;
      });
    };
    box.addEventListener("change", (event) => {
      const keep = event.target.closest("[data-tag-all]");
      if (keep) {
        keep.closest("[data-tag-group]").querySelectorAll("input[data-candidate]")
          .forEach((b) => { b.checked = keep.checked; });
      }
      updateCount();
    });

    const apply = (state) => {
      message.textContent = state.message;
      message.classList.toggle("error", state.status === "Failed");
      state.tags.forEach((tag) => {
        const group = box.querySelector(`[data-tag-group="${tag.tagId}"]`);
        if (!group) return;
        const bar = group.querySelector("[data-tag-bar]");
        bar.max = tag.max;
        bar.value = tag.value;
        group.querySelector("[data-tag-text]").textContent = tag.text;
        if (tag.done && !done.has(tag.tagId)) {
          done.add(tag.tagId);
          if (state.running) announce.textContent = tag.text;
        }
      });
      state.candidates.forEach((item) => {
        if (document.getElementById(`cand-${item.id}`)) return;
        const list = box.querySelector(`[data-candidates="${item.tagId}"]`);
        if (!list) return;
        const holder = document.createElement("template");
        holder.innerHTML = item.html.trim();
        list.appendChild(holder.content);
      });
      seen = Math.max(seen, state.seen);
      updateCount();
    };

    const tick = async () => {
      let state;
      try { state = await request(`${box.dataset.state}?after=${seen}`); } catch (error) {
        message.textContent = error.message;
        return window.setTimeout(tick, 3000);
      }
      apply(state);
      if (state.running) return window.setTimeout(tick, 1000);
      try { apply(await request(`${box.dataset.state}?after=0`)); } catch (_) { /* shown as it is */ }
      running = false;
      if (help) help.hidden = true;
      if (cancel) cancel.remove();
      if (!boxes().length) review.hidden = true;  // nothing to add
      box.querySelectorAll("[data-tag-group]").forEach((group) => {
        const keep = group.querySelector("[data-tag-all]");
        if (keep && !group.querySelector("input[data-candidate]")) keep.closest("label").remove();
      });
      updateCount();
      announce.textContent = state.message;
    };
    box.querySelectorAll("[data-tag-group]").forEach((group) => {
      const text = group.querySelector("[data-tag-text]").textContent;
      if (/: done|already has/.test(text)) done.add(group.dataset.tagGroup);
    });
    updateCount();
    if (running) window.setTimeout(tick, 500);
  }

  // ------------------------------------------------------------------ stored predictions: re-tag in place
  // The card turns into a sentence where it was, so the list does not jump back to the top.
  function setUpRetag(form) {
    const select = form.querySelector("[data-new-tag-choice]");
    const field = form.querySelector("[data-new-tag-field]");
    const error = form.querySelector("[data-retag-error]");
    if (select && field) {
      const update = () => { field.hidden = select.value !== select.dataset.newTagChoice; };
      select.addEventListener("change", () => {
        update();
        if (!field.hidden) field.querySelector("input").focus();
      });
      update();
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      error.hidden = true;
      try {
        const result = await request(form.dataset.retag, { method: "POST", body: new FormData(form) });
        const card = form.closest("[data-prediction]");
        const done = document.createElement("li");
        done.className = "prediction-done";
        done.setAttribute("role", "status");
        done.textContent = result.message;
        card.replaceWith(done);
        const count = document.querySelector("[data-shown]");
        if (count) {
          const left = Math.max(0, Number(count.dataset.shown) - 1);
          count.dataset.shown = left;
          count.textContent = `${left} shown`;
        }
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        button.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------------ copy buttons
  function setUpCopy(button) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const status = document.querySelector("[data-copy-status]");
      try {
        const timeout = new Promise((_, reject) => window.setTimeout(() => reject(new Error("timeout")), 1000));
        await Promise.race([navigator.clipboard.writeText(field.value), timeout]);
      } catch (_) {  // no Clipboard API (plain http on another host) or no permission: the old way
        field.select();
        document.execCommand("copy");
      }
      const label = button.textContent;
      button.textContent = "Copied";
      if (status) status.textContent = "Copied to the clipboard.";
      window.setTimeout(() => { button.textContent = label; }, 1500);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpSelection(document);
    document.querySelectorAll("[data-upload]").forEach(setUpUpload);
    document.querySelectorAll("[data-poll]").forEach(setUpPoll);
    document.querySelectorAll("[data-exports]").forEach(setUpExports);
    document.querySelectorAll("[data-threshold]").forEach(setUpThreshold);
    document.querySelectorAll("[data-copy]").forEach(setUpCopy);
    document.querySelectorAll("[data-search-form]").forEach(setUpSearchForm);
    document.querySelectorAll("[data-training-type]").forEach(setUpTrainingType);
    document.querySelectorAll("[data-search]").forEach(setUpSearch);
    document.querySelectorAll("form[data-retag]").forEach(setUpRetag);
  });
}());
