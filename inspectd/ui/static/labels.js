// Review labels: what each is called, on its button and when stored, and what it does.
export const LABEL_TEXT = {
  false_reject: "good (false reject)",
  true_defect: "real defect",
  missed_defect: "missed defect",
};
export const LABEL_BUTTON = { false_reject: "Good (false reject)", true_defect: "Real defect", missed_defect: "Missed defect" };
export const LABEL_WHY = {
  false_reject: "Its frame joins the reviewed good parts, which calibrate can add to the bundle's calibration set.",
  true_defect: "The reject stands; it is recorded as a real defect.",
  missed_defect: "It is recorded as a defect the station accepted.",
};
// the labels a part can take, by its verdict (the station refuses the others)
export const labelsFor = (verdict) => (verdict === "OK" ? ["missed_defect"] : ["false_reject", "true_defect"]);
