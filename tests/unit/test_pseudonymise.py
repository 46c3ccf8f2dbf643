"""The pseudonymisation rules of published decisions (docs/publication.md), one by one."""

from __future__ import annotations

import pytest

from services.meeting.pseudonymise import Pseudonymiser, pseudonymise, surname_of

# -- national numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "85.07.30-033.28",
        "85073003328",
        "850730 033 28",
        "85 07 30 033 28",
        "85.07.30-033 28",
        "05010112385",  # born in 2000 or later: the check counts a leading 2
    ],
)
def test_national_numbers_are_replaced_whatever_their_separators(written: str) -> None:
    assert pseudonymise(f"NISS {written}, né à Namur.") == "NISS [numéro national], né à Namur."


@pytest.mark.parametrize(
    "kept",
    [
        "facture n° 12345678901",  # 11 digits failing the modulo-97 check
        "référence 85.07.30-033.29",  # a NISS's shape, a wrong check
        "dossier 850730033280",  # 12 digits: not a national number
        "montant 1.234.567,89 EUR",
    ],
)
def test_numbers_that_are_not_national_numbers_are_kept(kept: str) -> None:
    assert pseudonymise(kept) == kept


# -- e-mail, bank accounts, phones -------------------------------------------------------


def test_email_addresses_are_replaced() -> None:
    text = "Écrire à jean.dupont+permis@example.be ou urbanisme@sambreville.be."
    assert pseudonymise(text) == ("Écrire à [adresse électronique] ou [adresse électronique].")


def test_belgian_bank_accounts_are_replaced_when_their_check_holds() -> None:
    assert pseudonymise("Compte BE68 5390 0754 7034.") == "Compte [compte bancaire]."
    assert pseudonymise("Compte BE68539007547034.") == "Compte [compte bancaire]."
    assert pseudonymise("Code BE68 5390 0754 7035.") == "Code BE68 5390 0754 7035."


@pytest.mark.parametrize(
    "phone",
    [
        "0471 23 45 67",
        "0471/23.45.67",
        "071/12.34.56",
        "02 123 45 67",
        "0471234567",
        "+32 471 23 45 67",
        "+32 (0)71 12 34 56",
        "0032 71 12 34 56",
    ],
)
def test_phone_numbers_are_replaced(phone: str) -> None:
    assert pseudonymise(f"Tél. {phone}.") == "Tél. [téléphone]."


@pytest.mark.parametrize(
    "kept",
    [
        "séance du 01/02/2026 10h",  # a date and an hour
        "BCE 0123.456.749",  # a company's enterprise number is public
        "TVA BE 0123 456 749",
        "décision COL/2026/0042",
        "lot 0,50 ha",
    ],
)
def test_dates_enterprise_numbers_and_references_are_not_phones(kept: str) -> None:
    assert pseudonymise(kept) == kept


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "rue Haute 12",
        "rue Haute, 12",
        "Rue de la Station 4A",
        "avenue Albert Ier 3 bte 2",
        "chaussée de Bruxelles 45, 1300 Wavre",
        "place Saint-Lambert 1/3",
        "rue du 8 Mai 14",
        "boulevard d'Avroy 5 bis",
        "12, rue de la Gare",
        "rue des Alliés 7, 5060 Sambreville",
    ],
)
def test_street_addresses_with_a_house_number_are_replaced(address: str) -> None:
    assert pseudonymise(f"Domicile: {address}.") == "Domicile: [adresse 1]."


def test_a_street_without_a_number_is_kept() -> None:
    text = "Réfection de la rue Haute et de la place Communale; 5060 Sambreville."
    assert pseudonymise(text) == text


def test_the_same_address_keeps_its_token_and_another_gets_the_next() -> None:
    text = "Rue Haute 12 et rue Basse 3; rappel: rue Haute 12."
    assert pseudonymise(text) == "[adresse 1] et [adresse 2]; rappel: [adresse 1]."


# -- persons ---------------------------------------------------------------------------------


def test_a_salutation_and_the_name_after_it() -> None:
    text = (
        "Vu la demande de Monsieur Jean Dupont et de Mme Anne-Marie VAN DER ELST; "
        "M. Dupont est informé. Madame de Vos aussi."
    )
    assert pseudonymise(text) == (
        "Vu la demande de Monsieur [personne 1] et de Mme [personne 2]; "
        "M. [personne 1] est informé. Madame [personne 3] aussi."
    )


def test_the_concerned_person_is_replaced_in_either_order_and_by_surname() -> None:
    text = "Dupont Jean demande un permis. JEAN DUPONT habite ici; le dossier de Dupont."
    assert pseudonymise(text, private_persons=["Jean Dupont"]) == (
        "[personne 1] demande un permis. [personne 1] habite ici; le dossier de [personne 1]."
    )


@pytest.mark.parametrize("name", ["Lambert, Sophie", "LAMBERT, Sophie", "Lambert, Sophie Anne"])
def test_a_concerned_person_named_last_name_comma_first_names_is_replaced(name: str) -> None:
    # The hub's urban service names an applicant "Last, First" (split_declared_name).
    text = (
        "Permis de Sophie Lambert. Lambert devra afficher le permis; "
        "copie à LAMBERT Sophie et à Lambert, Sophie."
    )
    assert pseudonymise(text, private_persons=[name]) == (
        "Permis de [personne 1]. [personne 1] devra afficher le permis; "
        "copie à [personne 1] et à [personne 1]."
    )


def test_a_three_word_name_is_replaced_whichever_end_is_the_family_name() -> None:
    text = "La demande de Jean Dupont est acceptée. Dupont en est informé."
    assert pseudonymise(text, private_persons=["Dupont Jean Marie"]) == (
        "La demande de [personne 1] est acceptée. [personne 1] en est informé."
    )
    assert pseudonymise(text, private_persons=["DUPONT Jean Marie"]) == (
        "La demande de [personne 1] est acceptée. [personne 1] en est informé."
    )
    written = "Permis de Jean de Vos; de Vos Jean."
    assert pseudonymise(written, private_persons=["de Vos, Jean"]) == (
        "Permis de [personne 1]; [personne 1]."
    )


def test_a_surname_in_lower_case_is_a_word_not_the_name() -> None:
    assert pseudonymise("Le marchand et M. Marchand.") == "Le marchand et M. [personne 1]."


def test_the_words_after_a_name_that_cannot_be_names_stay() -> None:
    assert pseudonymise("Entendu Monsieur Dupont Le collège décide") == (
        "Entendu Monsieur [personne 1] Le collège décide"
    )


def test_a_salutation_followed_by_an_office_is_kept() -> None:
    text = "Monsieur le Bourgmestre et Madame la Directrice générale signent."
    assert pseudonymise(text) == text


def test_the_communes_officials_are_kept_but_not_their_namesakes() -> None:
    text = "Monsieur Jean Martin, bourgmestre; M. Martin signe. Madame Anne Martin, riveraine."
    assert pseudonymise(text, officials=["Jean Martin"]) == (
        "Monsieur Jean Martin, bourgmestre; M. Martin signe. Madame [personne 1], riveraine."
    )


def test_a_company_name_is_kept() -> None:
    text = "Le marché est attribué à Bâtiments Lambda SA (BCE 0123.456.749)."
    assert pseudonymise(text) == text


def test_one_pseudonymiser_numbers_alike_across_the_texts_of_a_decision() -> None:
    pseudonymise_decision = Pseudonymiser(private_persons=["J. Dupont"])
    assert pseudonymise_decision("Permis de J. Dupont, rue Haute 12") == (
        "Permis de [personne 1], [adresse 1]"
    )
    assert pseudonymise_decision("Madame Lambert et M. Dupont, rue Haute 12") == (
        "Madame [personne 2] et M. [personne 1], [adresse 1]"
    )


def test_surnames_are_the_capitalised_part_else_the_last_word() -> None:
    assert surname_of("DUPONT Jean") == "DUPONT"
    assert surname_of("Jean de Vos") == "Vos"
    assert surname_of("J. Dupont") == "Dupont"
    assert surname_of("J.") is None
    assert surname_of("Lambert, Sophie") == "Lambert"  # the family name before the comma
    assert surname_of("van der Elst, Anne") == "Elst"


def test_everything_together() -> None:
    text = (
        "Le collège octroie à Madame Claire Lemaire (NN 85.07.30-033.28, tél. 0471 23 45 67, "
        "claire@example.be), domiciliée rue des Alliés 7, 5060 Sambreville, le permis "
        "(facture 12345678901)."
    )
    assert pseudonymise(text) == (
        "Le collège octroie à Madame [personne 1] (NN [numéro national], tél. [téléphone], "
        "[adresse électronique]), domiciliée [adresse 1], le permis (facture 12345678901)."
    )
