// The console's only script: asks before an action, and selects every row at once.
// Without it the server asks on a confirmation page instead.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.dataset.confirm || form.querySelector("input[name=confirmed]")) return;
  const button = event.submitter;
  const action = button && button.value ? button.value : "act on";
  if (!window.confirm(`${action[0].toUpperCase()}${action.slice(1)} ${form.dataset.confirm}?`)) {
    event.preventDefault();
    return;
  }
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "yes";
  form.appendChild(confirmed);
});
document.addEventListener("change", (event) => {
  const box = event.target;
  if (!box.matches("input[data-select-all]")) return;
  for (const row of box.closest("table").querySelectorAll("tbody input[type=checkbox]")) {
    row.checked = box.checked;
  }
});
