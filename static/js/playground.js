// The dashboard playground: Chat / Compare / Blend / Judge over WS /ws/v1/orchestrate, using the
// dashboard session (the socket's cookie), streaming every model's answer into its own card.
(function () {
  "use strict";

  const form = document.getElementById("playground-form");
  if (!form) return;
  const statusLine = document.getElementById("playground-status");
  const results = document.getElementById("results");
  const finalBox = document.getElementById("final");
  const totals = document.getElementById("totals");
  const runButton = document.getElementById("run-button");
  const stopButton = document.getElementById("stop-button");
  const tabs = document.querySelectorAll('[role="tab"][data-mode]');
  let socket = null;
  let ready = false;
  let running = null; // the client id of the running run
  let counter = 0;
  const cards = new Map(); // candidate index → card

  function usd(micros) {
    return "$" + (micros / 1e6).toFixed(6);
  }

  function setMode(mode) {
    form.dataset.mode = mode;
    tabs.forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.mode === mode)));
    const show = {
      ".only-chat": mode === "chat",
      ".only-multi": mode !== "chat",
      ".only-blend": mode === "blend",
      ".only-judge": mode === "judge" || (mode === "blend" && form.strategy.value === "best-of"),
    };
    Object.entries(show).forEach(([selector, visible]) => {
      form.querySelectorAll(selector).forEach((el) => { el.hidden = !visible; });
    });
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + form.dataset.socketPath);
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      ready = false;
      statusLine.textContent = "Disconnected. Reload the page to reconnect.";
      finish();
    });
  }

  function card(index, model) {
    let entry = cards.get(index);
    if (entry) return entry;
    const article = document.createElement("article");
    article.className = "result-card";
    article.dataset.model = model;
    const header = document.createElement("header");
    const title = document.createElement("strong");
    title.textContent = model;
    header.appendChild(title);
    const text = document.createElement("pre");
    text.className = "answer";
    const stats = document.createElement("footer");
    stats.className = "result-stats muted";
    stats.textContent = "streaming…";
    article.append(header, text, stats);
    results.appendChild(article);
    entry = { article, text, stats };
    cards.set(index, entry);
    return entry;
  }

  function describe(result) {
    const parts = [
      result.usage.prompt_tokens + " + " + result.usage.completion_tokens + " tokens",
      usd(result.cost.micros),
      result.latency_ms + " ms",
    ];
    if (result.ttft_ms !== null && result.ttft_ms !== undefined) parts.push("first token " + result.ttft_ms + " ms");
    return parts.join(" · ");
  }

  function showFinal(title, content, stats) {
    finalBox.hidden = false;
    finalBox.replaceChildren();
    const heading = document.createElement("h3");
    heading.textContent = title;
    const text = document.createElement("pre");
    text.className = "answer";
    text.textContent = content;
    finalBox.append(heading, text);
    if (stats) {
      const footer = document.createElement("p");
      footer.className = "muted";
      footer.textContent = stats;
      finalBox.appendChild(footer);
    }
    return text;
  }

  function handle(frame) {
    if (frame.type === "ready") {
      ready = true;
      statusLine.textContent = "Ready.";
      return;
    }
    if (running === null || frame.id !== running) {
      if (frame.type === "error") statusLine.textContent = frame.error.message;
      return;
    }
    switch (frame.type) {
      case "run":
        statusLine.textContent = "Running " + frame.request_id + "…";
        frame.models.forEach((model, index) => card(index, model));
        break;
      case "delta":
        if (form.dataset.mode === "chat") {
          card(0, frame.model || form.chat_model.value).text.textContent += frame.text;
        } else {
          card(frame.index, frame.model).text.textContent += frame.text;
        }
        break;
      case "model_done": {
        const entry = card(frame.index, frame.model);
        if (frame.error) {
          entry.article.classList.add("failed");
          entry.stats.textContent = "failed: " + frame.error.message;
        } else {
          entry.stats.textContent = describe(frame);
        }
        break;
      }
      case "synthesis_delta":
        if (finalBox.hidden) showFinal("Blended answer (" + frame.model + ")", "", "");
        finalBox.querySelector("pre").textContent += frame.text;
        break;
      case "synthesis_done":
        showFinal("Blended answer (" + frame.model + ")", frame.content, describe(frame));
        break;
      case "verdict": {
        const lines = frame.ranking.map((r) =>
          "#" + r.rank + " " + (r.model || "candidate " + r.index) + " — " + r.overall + "/10: " + r.rationale);
        showFinal("Judge's ranking (" + frame.judge.model + ")", lines.join("\n"), "");
        frame.ranking.forEach((r) => {
          const entry = cards.get(r.index);
          if (entry) entry.stats.textContent += " · rank " + r.rank + " (" + r.overall + "/10)";
        });
        break;
      }
      case "done":
        if (form.dataset.mode === "chat") {
          card(0, frame.model).stats.textContent = describe({ ...frame, ttft_ms: null });
          totals.textContent = "";
        } else {
          totals.textContent = "Total: " + frame.totals.calls + " calls, " + usd(frame.totals.cost.micros) +
            ", " + frame.totals.latency_ms + " ms.";
        }
        statusLine.textContent = "Done.";
        finish();
        break;
      case "error":
        statusLine.textContent = "Error: " + frame.error.message;
        finish();
        break;
      case "cancelled":
        statusLine.textContent = "Stopped.";
        finish();
        break;
      default:
        break;
    }
  }

  function finish() {
    running = null;
    runButton.disabled = false;
    stopButton.disabled = true;
  }

  function message(mode, id) {
    const content = form.prompt.value;
    const body = { type: mode, id, messages: [{ role: "user", content }] };
    const maxTokens = parseInt(form.max_tokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    if (mode === "chat") {
      body.model = form.chat_model.value;
      return body;
    }
    body.models = Array.from(form.querySelectorAll('input[name="models"]:checked')).map((el) => el.value);
    if (mode === "blend") {
      body.strategy = form.strategy.value;
      if (body.strategy === "synthesize") body.synthesizer = form.synthesizer.value;
    }
    if (mode === "judge" || (mode === "blend" && body.strategy === "best-of")) {
      body.judge_model = form.judge_model.value;
      const extra = form.criteria.value.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
      if (extra.length) body.criteria = extra;
      if (form.both_orders.checked) body.both_orders = true;
    }
    return body;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!ready || running !== null) return;
    counter += 1;
    running = "run-" + counter;
    cards.clear();
    results.replaceChildren();
    finalBox.hidden = true;
    totals.textContent = "";
    runButton.disabled = true;
    stopButton.disabled = false;
    const mode = form.dataset.mode;
    if (mode === "chat") card(0, form.chat_model.value);
    statusLine.textContent = "Starting…";
    socket.send(JSON.stringify(message(mode, running)));
  });

  stopButton.addEventListener("click", () => {
    if (running !== null) socket.send(JSON.stringify({ type: "cancel", id: running }));
  });

  tabs.forEach((tab) => tab.addEventListener("click", () => setMode(tab.dataset.mode)));
  form.strategy.addEventListener("change", () => setMode(form.dataset.mode));
  setMode(form.dataset.mode);
  connect();
})();
